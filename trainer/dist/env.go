package dist

import (
	"fmt"
	"strconv"
	"strings"
)

// Env is where this process stands in a data-parallel run.
type Env struct {
	Rank, Size           int // global rank and world size
	LocalRank, LocalSize int // on this machine
	MasterAddr           string
	MasterPort           int
	Source               string // "single", "torchrun" (also polyview's launcher) or "slurm"
}

// Distributed reports whether the run has more than one rank.
func (e Env) Distributed() bool { return e.Size > 1 }

// Addr is rank 0's host:port.
func (e Env) Addr() string { return Addr(e.MasterAddr, e.MasterPort) }

// FromEnv reads the rank layout from the environment, with the
// conventions users already have:
//
//   - torchrun's (and polyview's launcher's): RANK, WORLD_SIZE,
//     LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
//   - SLURM's, inside an srun step: SLURM_PROCID, SLURM_STEP_NUM_TASKS
//     (or SLURM_NTASKS), SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE; rank 0
//     is on the first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST)
//     unless MASTER_ADDR says otherwise, and MASTER_PORT defaults to one
//     drawn from SLURM_JOB_ID so that jobs sharing a node differ.
//
// WORLD_SIZE wins over SLURM, so torchrun under srun works. With neither,
// the run has one rank. A variable that is set but wrong is an error
// naming it.
func FromEnv(getenv func(string) string) (Env, error) {
	p := envParser{get: getenv}
	var e Env
	switch {
	case getenv("WORLD_SIZE") != "":
		e.Source = "torchrun"
		e.Size = p.int("WORLD_SIZE", 1)
		e.Rank = p.int("RANK", 0)
		e.LocalRank = p.optInt("LOCAL_RANK", e.Rank, 0)
		e.LocalSize = p.optInt("LOCAL_WORLD_SIZE", e.Size, 1)
		e.MasterAddr = getenv("MASTER_ADDR")
		if e.MasterAddr == "" {
			e.MasterAddr = "127.0.0.1"
		}
		e.MasterPort = p.optInt("MASTER_PORT", 0, 1)
		if e.Size > 1 && getenv("MASTER_PORT") == "" {
			p.bad("MASTER_PORT is not set (WORLD_SIZE=%d needs rank 0's port)", e.Size)
		}
	case getenv("SLURM_PROCID") != "" && getenv("SLURM_STEP_ID") != "":
		e.Source = "slurm"
		e.Rank = p.int("SLURM_PROCID", 0)
		if getenv("SLURM_STEP_NUM_TASKS") != "" {
			e.Size = p.int("SLURM_STEP_NUM_TASKS", 1)
		} else {
			e.Size = p.int("SLURM_NTASKS", 1)
		}
		e.LocalRank = p.optInt("SLURM_LOCALID", 0, 0)
		e.LocalSize = 1
		if v := getenv("SLURM_STEP_TASKS_PER_NODE"); v != "" {
			n, err := strconv.Atoi(strings.SplitN(v, "(", 2)[0])
			if err != nil || n < 1 {
				p.bad("SLURM_STEP_TASKS_PER_NODE=%q: want a count such as 4 or 4(x2)", v)
			}
			e.LocalSize = n
		}
		e.MasterAddr = getenv("MASTER_ADDR")
		if e.MasterAddr == "" {
			list := getenv("SLURM_STEP_NODELIST")
			name := "SLURM_STEP_NODELIST"
			if list == "" {
				list, name = getenv("SLURM_JOB_NODELIST"), "SLURM_JOB_NODELIST"
			}
			host, err := FirstHost(list)
			if err != nil {
				p.bad("%s=%q: %v", name, list, err)
			}
			e.MasterAddr = host
		}
		if getenv("MASTER_PORT") != "" {
			e.MasterPort = p.optInt("MASTER_PORT", 0, 1)
		} else {
			job := p.optInt("SLURM_JOB_ID", 0, 0)
			e.MasterPort = 20000 + job%20000
		}
	default:
		return Env{Size: 1, LocalSize: 1, Source: "single"}, nil
	}
	if p.err == nil {
		switch {
		case e.Rank >= e.Size:
			p.bad("rank %d is not below the world size %d (%s)", e.Rank, e.Size, e.Source)
		case e.LocalRank >= e.LocalSize:
			p.bad("local rank %d is not below the local world size %d (%s)", e.LocalRank,
				e.LocalSize, e.Source)
		case e.MasterPort > 65535:
			p.bad("MASTER_PORT=%d: not a TCP port", e.MasterPort)
		}
	}
	return e, p.err
}

// envParser reads integers, keeping the first error.
type envParser struct {
	get func(string) string
	err error
}

func (p *envParser) bad(format string, a ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("environment: "+format, a...)
	}
}

// int reads a required integer >= min.
func (p *envParser) int(name string, min int) int {
	v := p.get(name)
	if v == "" {
		p.bad("%s is not set", name)
		return min
	}
	return p.optInt(name, min, min)
}

// optInt reads an integer >= min, def when unset.
func (p *envParser) optInt(name string, def, min int) int {
	v := p.get(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		p.bad("%s=%q: not an integer", name, v)
		return def
	}
	if n < min {
		p.bad("%s=%d: must be at least %d", name, n, min)
		return def
	}
	return n
}

// FirstHost returns the first host of a SLURM node list such as
// "gpu[003-010,017],login1": "gpu003".
func FirstHost(list string) (string, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return "", fmt.Errorf("empty node list")
	}
	// The first entry ends at the first comma outside brackets.
	depth, end := 0, len(list)
	for i, c := range list {
		switch c {
		case '[':
			depth++
		case ']':
			depth--
		case ',':
			if depth == 0 && end == len(list) {
				end = i
			}
		}
	}
	entry := list[:end]
	open := strings.IndexByte(entry, '[')
	if open < 0 {
		if strings.ContainsAny(entry, "]") {
			return "", fmt.Errorf("unbalanced brackets")
		}
		return entry, nil
	}
	closeAt := strings.IndexByte(entry[open:], ']')
	if closeAt < 0 || open == 0 {
		return "", fmt.Errorf("unbalanced brackets or no host prefix")
	}
	// The first number of the first range, zero padding kept.
	inner := entry[open+1 : open+closeAt]
	first := strings.SplitN(strings.SplitN(inner, ",", 2)[0], "-", 2)[0]
	if first == "" || strings.Trim(first, "0123456789") != "" {
		return "", fmt.Errorf("range %q: want digits such as [01-04]", inner)
	}
	return entry[:open] + first + entry[open+closeAt+1:], nil
}
