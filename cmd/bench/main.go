// Command bench measures polyview's ops and prints tables, side by side
// with a PyTorch peer where one exists, as ratios. Each sub-command also
// writes its rows as JSON (-json).
//
//	go run ./cmd/bench loss   # the fused poly-view objectives
//	go run ./cmd/bench data   # dataset decode and delivery
//
// Benchmarks are programs, not timed tests: run them on a quiet machine.
package main

import (
	"fmt"
	"os"
	"sort"
)

// subcommand is one benchmark: run parses its own flags.
type subcommand struct {
	run  func(args []string) error
	help string
}

// subcommands is filled by each benchmark file's init.
var subcommands = map[string]subcommand{}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "help" || os.Args[1] == "--help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	sc, ok := subcommands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown benchmark %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := sc.run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: bench <benchmark> [flags]\n\nbenchmarks:")
	names := make([]string, 0, len(subcommands))
	for n := range subcommands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", n, subcommands[n].help)
	}
}
