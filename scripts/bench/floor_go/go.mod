module feedbench/floor

go 1.22
