module feedbench/loadgen

go 1.22
