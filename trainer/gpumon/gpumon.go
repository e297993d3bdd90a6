// Package gpumon samples the training GPU through NVML (go-nvml opens
// libnvidia-ml at run time, so this builds and runs without a driver:
// Open then reports that there is nothing to monitor).
package gpumon

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/polyview/polyview/trainer/metrics"
)

// Monitor reads one GPU's utilisation, memory, power, temperature and
// clocks. Safe for concurrent use.
type Monitor struct {
	mu  sync.Mutex
	dev nvml.Device
}

var initOnce sync.Once
var initErr error

// Open initialises NVML and binds GPU index. It returns an error when NVML
// (the NVIDIA driver) is absent or the index does not exist; callers then
// record no GPU readings.
func Open(index int) (*Monitor, error) {
	initOnce.Do(func() {
		defer func() {
			// go-nvml panics if the library cannot be loaded at all on some
			// versions; treat that as "no driver", never as a crash.
			if r := recover(); r != nil {
				initErr = fmt.Errorf("NVML unavailable: %v", r)
			}
		}()
		if ret := nvml.Init(); ret != nvml.SUCCESS {
			initErr = fmt.Errorf("NVML unavailable: %s", nvml.ErrorString(ret))
		}
	})
	if initErr != nil {
		return nil, initErr
	}
	dev, ret := nvml.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("NVML GPU %d: %s", index, nvml.ErrorString(ret))
	}
	return &Monitor{dev: dev}, nil
}

// Read samples the GPU now. Readings NVML refuses (some are not supported
// on every board) stay zero.
func (m *Monitor) Read() *metrics.GPUReading {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &metrics.GPUReading{}
	if u, ret := m.dev.GetUtilizationRates(); ret == nvml.SUCCESS {
		r.UtilPercent = int(u.Gpu)
	}
	if mem, ret := m.dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		r.MemUsedBytes, r.MemTotal = mem.Used, mem.Total
	}
	if p, ret := m.dev.GetPowerUsage(); ret == nvml.SUCCESS {
		r.PowerWatts = float64(p) / 1000 // milliwatts
	}
	if t, ret := m.dev.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		r.TempC = int(t)
	}
	if c, ret := m.dev.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		r.SMClockMHz = int(c)
	}
	if c, ret := m.dev.GetClockInfo(nvml.CLOCK_MEM); ret == nvml.SUCCESS {
		r.MemClockMHz = int(c)
	}
	return r
}
