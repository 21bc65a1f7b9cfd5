module feedbench/wsclient

go 1.22
