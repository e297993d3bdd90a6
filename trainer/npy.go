package trainer

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// WriteNPY writes a float32 matrix [rows][cols] in NumPy's .npy format
// (version 1.0, little-endian, C order).
func WriteNPY(w io.Writer, data []float32, rows, cols int) error {
	if len(data) != rows*cols {
		return fmt.Errorf("npy: %d values for %d x %d", len(data), rows, cols)
	}
	header := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }",
		rows, cols)
	// Magic (6) + version (2) + length (2) + header + '\n', padded to 64.
	total := 10 + len(header) + 1
	pad := (64 - total%64) % 64
	for i := 0; i < pad; i++ {
		header += " "
	}
	header += "\n"
	if _, err := w.Write([]byte("\x93NUMPY\x01\x00")); err != nil {
		return err
	}
	var hl [2]byte
	binary.LittleEndian.PutUint16(hl[:], uint16(len(header)))
	if _, err := w.Write(hl[:]); err != nil {
		return err
	}
	if _, err := io.WriteString(w, header); err != nil {
		return err
	}
	buf := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	_, err := w.Write(buf)
	return err
}
