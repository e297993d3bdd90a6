package bindings

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Copies within a device (Tensor.CopyFrom, pv_tensor_copy) on the CPU and
// the GPU, and the NCCL collectives (Comm, pv_comm_*). On the CPU the
// collectives must refuse with a clear error; the TestCUDAComm tests need
// a GPU and a library built with NCCL and skip, saying why, without them.
// Two-rank tests need two GPUs. Every expected value is exact: copies,
// one-rank collectives and broadcasts move bits, and a two-rank float32
// sum is one rounded addition, which the host repeats.

// TestTensorCopyFromFloat32 copies ranges between two tensors.
func TestTensorCopyFromFloat32(t *testing.T) {
	dev := cpuDevice(t)
	src, err := dev.FromFloat32([]float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := dev.FromFloat32(make([]float32, 8), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()

	steps := []struct {
		dstOff, srcOff, count int
		want                  []float32
	}{
		{2, 5, 4, []float32{0, 0, 5, 6, 7, 8, 0, 0}},
		{0, 0, 0, []float32{0, 0, 5, 6, 7, 8, 0, 0}}, // nothing
		{7, 9, 1, []float32{0, 0, 5, 6, 7, 8, 0, 9}}, // the last element
		{0, 2, 8, []float32{2, 3, 4, 5, 6, 7, 8, 9}}, // all of dst
	}
	for _, s := range steps {
		if err := dst.CopyFrom(s.dstOff, src, s.srcOff, s.count); err != nil {
			t.Fatalf("CopyFrom(%d, src, %d, %d): %v", s.dstOff, s.srcOff, s.count, err)
		}
		got, err := dst.Float32()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("after CopyFrom(%d, src, %d, %d): got %v, want %v", s.dstOff, s.srcOff,
				s.count, got, s.want)
		}
	}
}

// TestTensorCopyFromFloat64 copies between disjoint ranges of one tensor.
func TestTensorCopyFromFloat64(t *testing.T) {
	dev := cpuDevice(t)
	x, err := dev.FromFloat64([]float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if err := x.CopyFrom(0, x, 6, 4); err != nil {
		t.Fatal(err)
	}
	if err := x.CopyFrom(9, x, 4, 1); err != nil { // ranges that touch, not overlap
		t.Fatal(err)
	}
	got, err := x.Float64()
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{6, 7, 8, 9, 4, 5, 6, 7, 8, 4}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestTensorCopyFromErrors checks that every bad request fails as an
// invalid argument, with a message naming the problem, and writes nothing.
func TestTensorCopyFromErrors(t *testing.T) {
	dev := cpuDevice(t)
	src, err := dev.FromFloat32([]float32{1, 2, 3, 4, 5, 6}, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := dev.FromFloat32(make([]float32, 4), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	f64, err := dev.FromFloat64(make([]float64, 4), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer f64.Close()
	closed, err := dev.FromFloat32(make([]float32, 4), 4)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()

	cases := []struct {
		name                  string
		dst, src              *Tensor
		dstOff, srcOff, count int
		want                  string
	}{
		{"negative dst offset", dst, src, -1, 0, 1, "dst_offset is -1"},
		{"negative src offset", dst, src, 0, -2, 1, "src_offset is -2"},
		{"negative count", dst, src, 0, 0, -1, "count is -1"},
		{"past dst", dst, src, 2, 0, 3, "3 elements from dst_offset 2 run past the end of dst (4"},
		{"past src", dst, src, 0, 4, 3, "3 elements from src_offset 4 run past the end of src (6"},
		{"dst offset past the end", dst, src, 5, 0, 0, "0 elements from dst_offset 5 run past"},
		{"overflowing count", dst, src, 1, 0, math.MaxInt64, "run past the end of dst"},
		{"overlap in one tensor", src, src, 0, 2, 3, "overlap in one tensor"},
		{"dtype mismatch", f64, src, 0, 0, 1, "src is float32, dst float64"},
		{"closed src", dst, closed, 0, 0, 1, "src is closed"},
		{"nil src", dst, nil, 0, 0, 1, "src is nil"},
	}
	for _, c := range cases {
		err := c.dst.CopyFrom(c.dstOff, c.src, c.srcOff, c.count)
		if !isInvalid(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an invalid argument saying %q", c.name, err, c.want)
		}
	}
	got, err := dst.Float32()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, make([]float32, 4)) {
		t.Errorf("failed copies wrote into dst: %v", got)
	}
}

// TestCommOnCPU checks that a CPU device refuses the collectives, saying
// why, and checks NewComm's arguments before that.
func TestCommOnCPU(t *testing.T) {
	dev := cpuDevice(t)
	if dev.HasOps("comm") {
		t.Errorf("HasOps(comm) on the CPU: got true")
	}
	unsupported := &Error{Code: StatusUnsupported}
	const why = "has no NCCL collectives (CPU ranks meet over polyview's TCP group)"

	_, err := dev.CommUniqueID()
	if !errors.Is(err, unsupported) || !strings.Contains(err.Error(), why) {
		t.Errorf("CommUniqueID: got %v, want unsupported saying %q", err, why)
	}
	id := make([]byte, CommIDBytes)
	_, err = dev.NewComm(id, 0, 1, time.Minute)
	if !errors.Is(err, unsupported) || !strings.Contains(err.Error(), why) {
		t.Errorf("NewComm: got %v, want unsupported saying %q", err, why)
	}

	bad := []struct {
		name       string
		id         []byte
		rank, size int
		timeout    time.Duration
		want       string
	}{
		{"short id", id[:100], 0, 1, time.Minute, "id has 100 bytes, want 128"},
		{"zero timeout", id, 0, 1, 0, "timeout is 0s"},
		{"rank = size", id, 2, 2, time.Minute, "rank 2 outside [0, 2)"},
		{"negative rank", id, -1, 2, time.Minute, "rank -1 outside [0, 2)"},
		{"size 0", id, 0, 0, time.Minute, "size is 0"},
	}
	for _, b := range bad {
		_, err := dev.NewComm(b.id, b.rank, b.size, b.timeout)
		if !isInvalid(err) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("NewComm with %s: got %v, want an invalid argument saying %q", b.name,
				err, b.want)
		}
	}
}

// ---- GPU -----------------------------------------------------------------------

// commGPU opens GPU 0 or skips, and skips when the library has no NCCL.
func commGPU(t *testing.T) *Device {
	t.Helper()
	dev := gpuDevice(t)
	if !dev.HasOps("comm") {
		t.Skipf("%s has no collectives: the CUDA backend was built without NCCL", dev.Name())
	}
	return dev
}

// commValues draws n float32 values, exactly representable in bfloat16
// when bf16 is set.
func commValues(n int, seed uint64, bf16 bool) []float32 {
	r := rand.New(rand.NewPCG(seed, 0xc0))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	if bf16 {
		v = FromBFloat16(ToBFloat16(v))
	}
	return v
}

// newTensor makes a tensor of dtype holding v, closed at the test's end.
func newTensor(t *testing.T, dev *Device, dtype DType, v []float32, shape ...int) *Tensor {
	t.Helper()
	var x *Tensor
	var err error
	if dtype == BFloat16 {
		x, err = dev.FromBFloat16(v, shape...)
	} else {
		x, err = dev.FromFloat32(v, shape...)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Close)
	return x
}

func readF32(t *testing.T, x *Tensor) []float32 {
	t.Helper()
	v, err := x.Float32()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCUDATensorCopyFrom copies ranges on the GPU, in both dtypes, and
// refuses a copy between devices.
func TestCUDATensorCopyFrom(t *testing.T) {
	gpu := gpuDevice(t)
	cpu := cpuDevice(t)
	for _, dtype := range []DType{Float32, BFloat16} {
		v := commValues(1000, 1, true)
		src := newTensor(t, gpu, dtype, v, 10, 100)
		dst := newTensor(t, gpu, dtype, make([]float32, 600), 600)
		if err := dst.CopyFrom(100, src, 250, 500); err != nil {
			t.Fatalf("%v: %v", dtype, err)
		}
		if err := src.CopyFrom(0, src, 900, 100); err != nil { // within one tensor
			t.Fatalf("%v: %v", dtype, err)
		}
		want := make([]float32, 600)
		copy(want[100:], v[250:750])
		if got := readF32(t, dst); !slices.Equal(got, want) {
			t.Errorf("%v: dst differs from src[250:750] placed at 100", dtype)
		}
		wantSrc := append(slices.Clone(v[900:]), v[100:]...)
		if got := readF32(t, src); !slices.Equal(got, wantSrc) {
			t.Errorf("%v: src[0:100] differs from src[900:1000]", dtype)
		}
	}
	host := newTensor(t, cpu, Float32, make([]float32, 4), 4)
	dev := newTensor(t, gpu, Float32, make([]float32, 4), 4)
	err := dev.CopyFrom(0, host, 0, 4)
	if !isInvalid(err) || !strings.Contains(err.Error(), "copies cross no devices") {
		t.Errorf("copy from the CPU into a GPU tensor: got %v, want an invalid argument", err)
	}
}

// TestCUDACommSingleRank runs every collective on a group of one, where
// each is a copy, checks the argument errors, then Abort.
func TestCUDACommSingleRank(t *testing.T) {
	dev := commGPU(t)
	id, err := dev.CommUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	comm, err := dev.NewComm(id, 0, 1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer comm.Close()
	if comm.Rank() != 0 || comm.Size() != 1 {
		t.Errorf("rank %d of %d, want 0 of 1", comm.Rank(), comm.Size())
	}

	for _, dtype := range []DType{Float32, BFloat16} {
		v := commValues(4099, 2, dtype == BFloat16)
		x := newTensor(t, dev, dtype, v, 4099)
		if err := comm.AllReduceSum(x); err != nil {
			t.Fatalf("%v all-reduce: %v", dtype, err)
		}
		if got := readF32(t, x); !slices.Equal(got, v) {
			t.Errorf("%v all-reduce of one rank changed the values", dtype)
		}
		out := newTensor(t, dev, dtype, make([]float32, 4099), 4099)
		if err := comm.AllGather(x, out); err != nil {
			t.Fatalf("%v all-gather: %v", dtype, err)
		}
		if got := readF32(t, out); !slices.Equal(got, v) {
			t.Errorf("%v all-gather of one rank differs from local", dtype)
		}
		if err := comm.Broadcast(x, 0); err != nil {
			t.Fatalf("%v broadcast: %v", dtype, err)
		}
		if got := readF32(t, x); !slices.Equal(got, v) {
			t.Errorf("%v broadcast of one rank changed the values", dtype)
		}
	}

	// The order of the device's stream: a copy queued before the
	// collective is in its input.
	a := newTensor(t, dev, Float32, []float32{1, 2, 3, 4}, 4)
	b := newTensor(t, dev, Float32, make([]float32, 4), 4)
	if err := b.CopyFrom(0, a, 0, 4); err != nil {
		t.Fatal(err)
	}
	if err := comm.AllReduceSum(b); err != nil {
		t.Fatal(err)
	}
	if got := readF32(t, b); !slices.Equal(got, []float32{1, 2, 3, 4}) {
		t.Errorf("all-reduce after a queued copy: got %v, want [1 2 3 4]", got)
	}

	commArgErrors(t, dev, comm)

	if err := comm.Abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if err := comm.Abort(); err != nil {
		t.Errorf("second abort: %v", err)
	}
	err = comm.AllReduceSum(a)
	if err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("all-reduce after Abort: got %v, want an error saying aborted", err)
	}
	comm.Close()
	if err := comm.Abort(); err == nil {
		t.Errorf("abort after Close: got nil, want an error")
	}
}

// commArgErrors checks the core's argument errors on a live communicator.
func commArgErrors(t *testing.T, dev *Device, comm *Comm) {
	t.Helper()
	cpu := cpuDevice(t)
	u8, err := dev.NewTensor(Uint8, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer u8.Close()
	x := newTensor(t, dev, Float32, make([]float32, 4), 4)
	host := newTensor(t, cpu, Float32, make([]float32, 4), 4)
	small := newTensor(t, dev, Float32, make([]float32, 3), 3)
	bf := newTensor(t, dev, BFloat16, make([]float32, 4), 4)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"all-reduce of uint8", comm.AllReduceSum(u8), "must be float32 or bfloat16"},
		{"all-reduce of a CPU tensor", comm.AllReduceSum(host), "the communicator on"},
		{"all-gather into too few", comm.AllGather(x, small), "must be size 1 x local's 4"},
		{"all-gather across dtypes", comm.AllGather(x, bf), "local is float32, out bfloat16"},
		{"broadcast from rank 1", comm.Broadcast(x, 1), "root 1 outside [0, 1)"},
		{"all-reduce of nil", comm.AllReduceSum(nil), "t is nil"},
	}
	for _, c := range cases {
		if !isInvalid(c.err) || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: got %v, want an invalid argument saying %q", c.name, c.err, c.want)
		}
	}
}

// TestCUDACommInitTimeout joins a group of two whose rank 1 never comes:
// init must fail after its timeout instead of waiting for ever.
func TestCUDACommInitTimeout(t *testing.T) {
	dev := commGPU(t)
	id, err := dev.CommUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		c, err := dev.NewComm(id, 0, 2, 2*time.Second)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("init of a group missing a rank still waits after 2 minutes (timeout 2 s)")
	}
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "did not complete within 2 s") {
		t.Errorf("init without rank 1: got %v, want a timeout error", err)
	}
	if took < 2*time.Second || took > 30*time.Second {
		t.Errorf("init failed after %v, want about 2 s", took)
	}
}

// twoRanks opens GPUs 0 and 1 and joins them in one group, or skips.
func twoRanks(t *testing.T, timeout time.Duration) ([2]*Device, [2]*Comm) {
	t.Helper()
	dev0 := commGPU(t)
	n, err := CUDADeviceCount()
	if err != nil || n < 2 {
		t.Skipf("two-rank tests need 2 GPUs; this machine has %d (%v)", n, err)
	}
	dev1, err := Open("cuda:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev1.Close)
	devs := [2]*Device{dev0, dev1}
	id, err := dev0.CommUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	var comms [2]*Comm
	errs := onRanks(func(r int) error {
		var err error
		comms[r], err = devs[r].NewComm(id, r, 2, timeout)
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: init: %v", r, err)
		}
	}
	t.Cleanup(func() {
		onRanks(func(r int) error { comms[r].Close(); return nil })
	})
	return devs, comms
}

// onRanks runs f(0) and f(1) at once, as two ranks would, and returns
// their errors.
func onRanks(f func(rank int) error) [2]error {
	var errs [2]error
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(r)
		}()
	}
	wg.Wait()
	return errs
}

func checkRanks(t *testing.T, what string, errs [2]error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %s: %v", r, what, err)
		}
	}
}

// TestCUDACommTwoRanks checks each collective of two GPUs against the
// host: sums (one float32 addition per element, which the host repeats
// exactly), the rank-major gather and a broadcast from rank 1.
func TestCUDACommTwoRanks(t *testing.T) {
	devs, comms := twoRanks(t, 60*time.Second)
	const n = 1 << 16
	for _, dtype := range []DType{Float32, BFloat16} {
		var local [2][]float32
		var x, gathered [2]*Tensor
		for r := range 2 {
			local[r] = commValues(n, uint64(10+r), dtype == BFloat16)
			x[r] = newTensor(t, devs[r], dtype, local[r], n)
			gathered[r] = newTensor(t, devs[r], dtype, make([]float32, 2*n), 2, n)
		}
		checkRanks(t, fmt.Sprintf("%v all-gather", dtype), onRanks(func(r int) error {
			return comms[r].AllGather(x[r], gathered[r])
		}))
		wantGather := append(slices.Clone(local[0]), local[1]...)
		for r := range 2 {
			if got := readF32(t, gathered[r]); !slices.Equal(got, wantGather) {
				t.Errorf("%v all-gather on rank %d is not rank 0's then rank 1's", dtype, r)
			}
		}

		checkRanks(t, fmt.Sprintf("%v all-reduce", dtype), onRanks(func(r int) error {
			return comms[r].AllReduceSum(x[r])
		}))
		sum := make([]float32, n)
		for i := range sum {
			sum[i] = local[0][i] + local[1][i]
		}
		if dtype == BFloat16 {
			sum = FromBFloat16(ToBFloat16(sum))
		}
		for r := range 2 {
			if got := readF32(t, x[r]); !slices.Equal(got, sum) {
				t.Errorf("%v all-reduce on rank %d differs from the host's sum", dtype, r)
			}
		}

		checkRanks(t, fmt.Sprintf("%v broadcast", dtype), onRanks(func(r int) error {
			return comms[r].Broadcast(gathered[r], 1)
		}))
		for r := range 2 {
			if got := readF32(t, gathered[r]); !slices.Equal(got, wantGather) {
				t.Errorf("%v broadcast from rank 1 changed rank %d's tensor", dtype, r)
			}
		}
	}
}

// TestCUDACommAbortPending aborts rank 0 while its all-reduce waits for a
// rank 1 that never calls: the call must return an error at once, long
// before the 60 s timeout.
func TestCUDACommAbortPending(t *testing.T) {
	devs, comms := twoRanks(t, 60*time.Second)
	x := newTensor(t, devs[0], Float32, commValues(1024, 3, false), 1024)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- comms[0].AllReduceSum(x) }()
	time.Sleep(300 * time.Millisecond)
	if err := comms[0].Abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a pending all-reduce still waits 30 s after Abort")
	}
	if err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("pending all-reduce: got %v, want an error saying aborted", err)
	}
	t.Logf("pending all-reduce failed %v after it began: %v", time.Since(start), err)
	if err := comms[0].Broadcast(x, 0); err == nil {
		t.Errorf("broadcast after Abort: got nil, want an error")
	}
	comms[1].Abort() // rank 1 would otherwise wait for rank 0 in Close
}

// TestCUDACommCollectiveTimeout lets rank 0 all-reduce alone with a 10 s
// timeout (init, which it also bounds, may take seconds): the call must
// fail with the timeout error.
func TestCUDACommCollectiveTimeout(t *testing.T) {
	devs, comms := twoRanks(t, 10*time.Second)
	x := newTensor(t, devs[0], Float32, commValues(1024, 4, false), 1024)
	start := time.Now()
	err := comms[0].AllReduceSum(x)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(),
		"did not complete within 10 s: another rank died or hangs") {
		t.Errorf("lonely all-reduce: got %v, want the timeout error", err)
	}
	if took < 10*time.Second || took > 40*time.Second {
		t.Errorf("lonely all-reduce failed after %v, want about 10 s", took)
	}
	comms[1].Abort()
}
