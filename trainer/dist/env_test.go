package dist

import (
	"strings"
	"testing"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestFromEnv(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want Env
		err  string
	}{
		{"single", nil, Env{Size: 1, LocalSize: 1, Source: "single"}, ""},
		{"torchrun", map[string]string{"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
			"LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"},
			Env{Rank: 5, Size: 8, LocalRank: 1, LocalSize: 4, MasterAddr: "node0",
				MasterPort: 29500, Source: "torchrun"}, ""},
		{"slurm", map[string]string{"SLURM_PROCID": "3", "SLURM_STEP_ID": "0",
			"SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
			"SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "123456"},
			Env{Rank: 3, Size: 4, LocalRank: 1, LocalSize: 2, MasterAddr: "gpu007",
				MasterPort: 20000 + 123456%20000, Source: "slurm"}, ""},
		{"torchrun wins over slurm", map[string]string{"SLURM_PROCID": "3", "SLURM_STEP_ID": "0",
			"SLURM_NTASKS": "4", "RANK": "0", "WORLD_SIZE": "1"},
			Env{Size: 1, LocalSize: 1, MasterAddr: "127.0.0.1", Source: "torchrun"}, ""},
		{"slurm batch script without srun is one rank", map[string]string{"SLURM_PROCID": "0",
			"SLURM_NTASKS": "4"}, Env{Size: 1, LocalSize: 1, Source: "single"}, ""},
		{"bad rank", map[string]string{"RANK": "x", "WORLD_SIZE": "2", "MASTER_PORT": "1"},
			Env{}, `RANK="x": not an integer`},
		{"rank too big", map[string]string{"RANK": "2", "WORLD_SIZE": "2", "MASTER_PORT": "1"},
			Env{}, "rank 2 is not below the world size 2"},
		{"no port", map[string]string{"RANK": "0", "WORLD_SIZE": "2"}, Env{},
			"MASTER_PORT is not set"},
		{"no rank", map[string]string{"WORLD_SIZE": "2", "MASTER_PORT": "1"}, Env{},
			"RANK is not set"},
		{"bad nodelist", map[string]string{"SLURM_PROCID": "0", "SLURM_STEP_ID": "0",
			"SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[1-"}, Env{}, "SLURM_JOB_NODELIST"},
	}
	for _, tc := range cases {
		got, err := FromEnv(envOf(tc.env))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestFirstHost(t *testing.T) {
	for in, want := range map[string]string{
		"node1":                     "node1",
		"node1,node2":               "node1",
		"gpu[003-010,017],login1":   "gpu003",
		"gpu[17,3-4]":               "gpu17",
		"rack1-n[08-09]-ib,rack2-x": "rack1-n08-ib",
	} {
		if got, err := FirstHost(in); err != nil || got != want {
			t.Errorf("FirstHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "gpu[", "[1-2]", "gpu[a-b]", "gpu]"} {
		if got, err := FirstHost(bad); err == nil {
			t.Errorf("FirstHost(%q) = %q, want an error", bad, got)
		}
	}
}
