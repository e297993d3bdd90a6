// Package csrc compiles polyview's C ABI and CPU backend with cgo. It has
// no Go API: package bindings declares the C functions through polyview.h
// and the linker joins them. Keeping the C++ in its own package lets the
// Go build cache see every change to these files.
package csrc

// #cgo CXXFLAGS: -std=c++17 -O3 -Wall -Wno-unused-function -Wno-psabi
// #cgo LDFLAGS: -ldl -lpthread -lstdc++ -lm
import "C"
