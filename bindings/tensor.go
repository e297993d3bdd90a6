package bindings

/*
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// DType is a tensor's element type.
type DType int

// Element types. Float64 exists on the CPU only, as the reference of
// gradient checks.
const (
	Float32  DType = C.PV_F32
	BFloat16 DType = C.PV_BF16
	Float64  DType = C.PV_F64
	Uint8    DType = C.PV_U8
	Int32    DType = C.PV_I32
)

var dtypeInfo = map[DType]struct {
	name string
	size int
}{
	Float32: {"float32", 4}, BFloat16: {"bfloat16", 2}, Float64: {"float64", 8},
	Uint8: {"uint8", 1}, Int32: {"int32", 4},
}

func (t DType) String() string {
	if i, ok := dtypeInfo[t]; ok {
		return i.name
	}
	return fmt.Sprintf("dtype(%d)", int(t))
}

// Size is the number of bytes per element.
func (t DType) Size() int { return dtypeInfo[t].size }

// Tensor is dense row-major memory on a device. Methods are safe for
// concurrent use except Close, which must come after all other use. A
// tensor that is never closed is freed by the garbage collector.
type Tensor struct {
	ptr   *C.pv_tensor
	dev   *Device
	dtype DType
	shape []int
	mu    sync.Mutex
}

// NewTensor allocates an uninitialised tensor.
func (d *Device) NewTensor(dtype DType, shape ...int) (*Tensor, error) {
	cshape := make([]C.int64_t, len(shape)+1)
	for i, s := range shape {
		cshape[i] = C.int64_t(s)
	}
	t := &Tensor{dev: d, dtype: dtype, shape: append([]int(nil), shape...)}
	err := call(fmt.Sprintf("new %v tensor %v", dtype, shape), func() C.pv_status {
		return C.pv_tensor_create(d.ptr, C.pv_dtype(dtype), C.int(len(shape)), &cshape[0], &t.ptr)
	})
	if err != nil {
		return nil, err
	}
	runtime.SetFinalizer(t, (*Tensor).Close)
	return t, nil
}

// FromFloat32 allocates a Float32 tensor holding a copy of data; the
// product of shape must equal len(data).
func (d *Device) FromFloat32(data []float32, shape ...int) (*Tensor, error) {
	return fromSlice(d, Float32, data, shape)
}

// FromFloat64 allocates a Float64 tensor (CPU only) holding a copy of data.
func (d *Device) FromFloat64(data []float64, shape ...int) (*Tensor, error) {
	return fromSlice(d, Float64, data, shape)
}

// FromBFloat16 allocates a BFloat16 tensor from float32 values, rounding
// each to the nearest bfloat16.
func (d *Device) FromBFloat16(data []float32, shape ...int) (*Tensor, error) {
	return fromSlice(d, BFloat16, ToBFloat16(data), shape)
}

func fromSlice[E any](d *Device, dtype DType, data []E, shape []int) (*Tensor, error) {
	n := 1
	for _, s := range shape {
		n *= s
	}
	if n != len(data) {
		return nil, fmt.Errorf("new %v tensor %v: %d values for %d elements", dtype, shape, len(data), n)
	}
	t, err := d.NewTensor(dtype, shape...)
	if err != nil {
		return nil, err
	}
	if err := t.write(sliceBytes(data)); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Close frees the tensor's memory. Calling it twice is harmless.
func (t *Tensor) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptr != nil {
		C.pv_tensor_free(t.ptr)
		t.ptr = nil
		runtime.SetFinalizer(t, nil)
	}
}

// Device is the device that holds the tensor.
func (t *Tensor) Device() *Device { return t.dev }

// DType is the element type.
func (t *Tensor) DType() DType { return t.dtype }

// Shape returns a copy of the tensor's dimensions.
func (t *Tensor) Shape() []int { return append([]int(nil), t.shape...) }

// Numel is the number of elements.
func (t *Tensor) Numel() int {
	n := 1
	for _, s := range t.shape {
		n *= s
	}
	return n
}

// Reshape gives the tensor a new shape with the same number of elements,
// in place; the row-major data is untouched.
func (t *Tensor) Reshape(shape ...int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptr == nil {
		return fmt.Errorf("reshape: tensor is closed")
	}
	cshape := make([]C.int64_t, len(shape)+1)
	for i, s := range shape {
		cshape[i] = C.int64_t(s)
	}
	err := call(fmt.Sprintf("reshape %v to %v", t.shape, shape), func() C.pv_status {
		return C.pv_tensor_reshape(t.ptr, C.int(len(shape)), &cshape[0])
	})
	if err == nil {
		t.shape = append([]int(nil), shape...)
	}
	return err
}

// Bytes is the size of the tensor's memory.
func (t *Tensor) Bytes() int { return t.Numel() * t.dtype.Size() }

// WriteFloat32 copies data into a Float32 or BFloat16 tensor (rounding to
// bfloat16 for the latter).
func (t *Tensor) WriteFloat32(data []float32) error {
	switch t.dtype {
	case Float32:
		return t.write(sliceBytes(data))
	case BFloat16:
		return t.write(sliceBytes(ToBFloat16(data)))
	}
	return fmt.Errorf("write float32 into a %v tensor", t.dtype)
}

// WriteFloat64 copies data into a Float64 tensor.
func (t *Tensor) WriteFloat64(data []float64) error {
	if t.dtype != Float64 {
		return fmt.Errorf("write float64 into a %v tensor", t.dtype)
	}
	return t.write(sliceBytes(data))
}

// WriteBytes copies raw bytes into any tensor; len(b) must equal Bytes().
func (t *Tensor) WriteBytes(b []byte) error { return t.write(b) }

// Float32 reads a Float32 or BFloat16 tensor into a new slice.
func (t *Tensor) Float32() ([]float32, error) {
	switch t.dtype {
	case Float32:
		out := make([]float32, t.Numel())
		return out, t.read(sliceBytes(out))
	case BFloat16:
		raw := make([]uint16, t.Numel())
		if err := t.read(sliceBytes(raw)); err != nil {
			return nil, err
		}
		return FromBFloat16(raw), nil
	}
	return nil, fmt.Errorf("read a %v tensor as float32", t.dtype)
}

// Float64 reads any floating-point tensor into a new float64 slice.
func (t *Tensor) Float64() ([]float64, error) {
	if t.dtype == Float64 {
		out := make([]float64, t.Numel())
		return out, t.read(sliceBytes(out))
	}
	f, err := t.Float32()
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(f))
	for i, v := range f {
		out[i] = float64(v)
	}
	return out, nil
}

// ReadBytes copies the tensor's raw bytes into b; len(b) must equal Bytes().
func (t *Tensor) ReadBytes(b []byte) error { return t.read(b) }

func (t *Tensor) write(b []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptr == nil {
		return fmt.Errorf("write tensor: tensor is closed")
	}
	return call("write tensor", func() C.pv_status {
		return C.pv_tensor_write(t.ptr, bytesPtr(b), C.int64_t(len(b)))
	})
}

func (t *Tensor) read(b []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptr == nil {
		return fmt.Errorf("read tensor: tensor is closed")
	}
	return call("read tensor", func() C.pv_status {
		return C.pv_tensor_read(t.ptr, bytesPtr(b), C.int64_t(len(b)))
	})
}

// CopyFrom copies count elements of src, from element srcOffset on, into
// t from element dstOffset on (pv_tensor_copy). Offsets and count are in
// elements of the row-major data; t and src share a device and a dtype,
// and may be one tensor when the ranges do not overlap. The copy is
// queued on the device with its other work, with no trip through the
// host.
func (t *Tensor) CopyFrom(dstOffset int, src *Tensor, srcOffset, count int) error {
	dp, err := t.handle("dst")
	if err != nil {
		return &Error{Op: "tensor copy", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	sp, err := src.handle("src")
	if err != nil {
		return &Error{Op: "tensor copy", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	err = call("tensor copy", func() C.pv_status {
		return C.pv_tensor_copy(dp, C.int64_t(dstOffset), sp, C.int64_t(srcOffset), C.int64_t(count))
	})
	runtime.KeepAlive(t)
	runtime.KeepAlive(src)
	return err
}

// handle returns the C tensor, or an error naming what when it is closed.
func (t *Tensor) handle(what string) (*C.pv_tensor, error) {
	if t == nil {
		return nil, fmt.Errorf("%s is nil", what)
	}
	if t.ptr == nil {
		return nil, fmt.Errorf("%s is closed", what)
	}
	return t.ptr, nil
}

func sliceBytes[E any](s []E) []byte {
	if len(s) == 0 {
		return nil
	}
	var e E
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(e)))
}

func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// ToBFloat16 rounds float32 values to bfloat16 bit patterns (nearest,
// ties to even; NaN stays NaN).
func ToBFloat16(f []float32) []uint16 {
	out := make([]uint16, len(f))
	for i, v := range f {
		u := math.Float32bits(v)
		if u&0x7fffffff > 0x7f800000 {
			out[i] = uint16(u>>16) | 0x40
			continue
		}
		u += 0x7fff + (u>>16)&1
		out[i] = uint16(u >> 16)
	}
	return out
}

// FromBFloat16 widens bfloat16 bit patterns to float32 exactly.
func FromBFloat16(b []uint16) []float32 {
	out := make([]float32, len(b))
	for i, v := range b {
		out[i] = math.Float32frombits(uint32(v) << 16)
	}
	return out
}
