package bindings

/*
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"strings"
)

// Objective is one of the poly-view objectives of OBJECTIVES.md.
type Objective int

// The objectives. SimCLR takes exactly two views; the others any M >= 2.
const (
	SimCLR    Objective = C.PV_OBJ_SIMCLR
	MultiCrop Objective = C.PV_OBJ_MULTICROP
	GPVC      Objective = C.PV_OBJ_GPVC
	APVC      Objective = C.PV_OBJ_APVC
	SuffStats Objective = C.PV_OBJ_SUFFSTATS
	MVInfoNCE Objective = C.PV_OBJ_MVINFONCE
	MVDHEL    Objective = C.PV_OBJ_MVDHEL
)

// Objectives lists every objective in ABI order.
func Objectives() []Objective {
	return []Objective{SimCLR, MultiCrop, GPVC, APVC, SuffStats, MVInfoNCE, MVDHEL}
}

// String is the objective's name in flags and configs ("gpvc", ...).
func (o Objective) String() string {
	if o < 0 || o >= C.PV_OBJ_COUNT {
		return fmt.Sprintf("objective(%d)", int(o))
	}
	return C.GoString(C.pv_objective_name(C.pv_objective(o)))
}

// ParseObjective maps a name ("gpvc", case-insensitive) to its Objective.
func ParseObjective(name string) (Objective, error) {
	var names []string
	for _, o := range Objectives() {
		if strings.EqualFold(name, o.String()) {
			return o, nil
		}
		names = append(names, o.String())
	}
	return 0, fmt.Errorf("unknown objective %q (want one of %s)", name, strings.Join(names, ", "))
}

// MarshalText and UnmarshalText let configs hold objectives by name.
func (o Objective) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText parses a name with ParseObjective.
func (o *Objective) UnmarshalText(b []byte) error {
	v, err := ParseObjective(string(b))
	*o = v
	return err
}

// Loss is a poly-view objective at a temperature. Apply it to projection
// head outputs h of shape [N, M, d] (row i*M + a is view a of image i).
type Loss struct {
	Objective Objective
	Tau       float64 // temperature, > 0
}

// Forward returns the loss of h.
func (l Loss) Forward(h *Tensor) (float64, error) { return l.eval(h, nil) }

// ForwardBackward returns the loss of h and writes dL/dh into grad, a
// tensor of h's shape on h's device (Float32, BFloat16 or Float64; it may
// be h itself).
func (l Loss) ForwardBackward(h, grad *Tensor) (float64, error) {
	if grad == nil {
		return 0, fmt.Errorf("%v loss: grad is nil (use Forward for the loss alone)", l.Objective)
	}
	return l.eval(h, grad)
}

func (l Loss) eval(h, grad *Tensor) (float64, error) {
	hp, err := h.handle("h")
	if err != nil {
		return 0, fmt.Errorf("%v loss: %w", l.Objective, err)
	}
	var gp *C.pv_tensor
	if grad != nil {
		if gp, err = grad.handle("grad"); err != nil {
			return 0, fmt.Errorf("%v loss: %w", l.Objective, err)
		}
	}
	var value C.double
	err = call(l.Objective.String()+" loss", func() C.pv_status {
		return C.pv_loss(h.dev.ptr, C.pv_objective(l.Objective), C.double(l.Tau), hp, gp, &value)
	})
	return float64(value), err
}
