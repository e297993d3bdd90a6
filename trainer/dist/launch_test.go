package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain doubles as the program Launch starts in these tests: with
// POLYVIEW_TEST_CHILD set, it behaves as a rank and exits.
func TestMain(m *testing.M) {
	if mode := os.Getenv("POLYVIEW_TEST_CHILD"); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

func child(mode string) int {
	env, err := FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch mode {
	case "report":
		fmt.Printf("rank=%d size=%d local=%d/%d master=%s\n", env.Rank, env.Size,
			env.LocalRank, env.LocalSize, env.Addr())
		return 0
	case "rank1-fails":
		if env.Rank == 1 {
			fmt.Fprintln(os.Stderr, "rank 1 giving up")
			return 3
		}
		time.Sleep(time.Minute) // the launcher must stop us
		return 0
	}
	return 4
}

func launchSelf(t *testing.T, mode string, procs int) (string, string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = Launch(context.Background(), LaunchConfig{Program: self, ProcsPerNode: procs,
		Env: append(os.Environ(), "POLYVIEW_TEST_CHILD="+mode), Stdout: &out, Stderr: &errOut,
		Grace: 2 * time.Second})
	return out.String(), errOut.String(), err
}

// TestLaunch: each local rank gets torchrun's variables; rank 0's output
// passes through and the others' lines carry their rank.
func TestLaunch(t *testing.T) {
	out, errOut, err := launchSelf(t, "report", 3)
	if err != nil {
		t.Fatal(err, errOut)
	}
	if !strings.Contains(out, "rank=0 size=3 local=0/3 master=127.0.0.1:") {
		t.Errorf("rank 0 output %q", out)
	}
	for r := 1; r < 3; r++ {
		want := fmt.Sprintf("[rank %d] rank=%d size=3 local=%d/3 master=127.0.0.1:", r, r, r)
		if !strings.Contains(errOut, want) {
			t.Errorf("rank %d: %q not in %q", r, want, errOut)
		}
	}
}

// TestLaunchStopsTheOthers: when one rank fails, the launcher stops the
// rest at once and names the failed rank.
func TestLaunchStopsTheOthers(t *testing.T) {
	start := time.Now()
	_, errOut, err := launchSelf(t, "rank1-fails", 3)
	var re *RankError
	if !errors.As(err, &re) || re.Rank != 1 || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("error %v, want rank 1's exit status 3", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v: the other ranks were not stopped", d)
	}
	if !strings.Contains(errOut, "[rank 1] rank 1 giving up") {
		t.Errorf("rank 1's stderr missing: %q (%v)", errOut, err)
	}
}
