package bindings

/*
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"runtime"
)

// Optimizer names an update rule of pv_optimizer_step.
type Optimizer int

// The optimizers.
const (
	SGD   Optimizer = C.PV_OPT_SGD   // momentum, optional Nesterov, L2 weight decay
	LARS  Optimizer = C.PV_OPT_LARS  // SGD with a layer-wise trust ratio
	AdamW Optimizer = C.PV_OPT_ADAMW // Adam with decoupled weight decay
)

func (o Optimizer) String() string {
	switch o {
	case SGD:
		return "sgd"
	case LARS:
		return "lars"
	case AdamW:
		return "adamw"
	}
	return fmt.Sprintf("optimizer(%d)", int(o))
}

// OptimizerStep is one step's hyper-parameters (pv_optim_desc in
// polyview.h gives the update formulas).
type OptimizerStep struct {
	Kind        Optimizer
	LR          float64 // this step's learning rate
	Momentum    float64 // SGD, LARS
	Nesterov    bool    // SGD, LARS
	WeightDecay float64
	Eta         float64 // LARS trust coefficient, e.g. 0.001
	Beta1       float64 // AdamW, e.g. 0.9
	Beta2       float64 // AdamW, e.g. 0.999
	Eps         float64 // AdamW, e.g. 1e-8
	Step        int     // AdamW bias correction: 1 on the first step
	// Exclude drops weight decay and, for LARS, the trust ratio: set for
	// BN parameters and biases.
	Exclude bool
}

// Apply updates param in place from grad (pv_optimizer_step). state0 is
// the momentum (AdamW: first moment), state1 AdamW's second moment and nil
// otherwise; both start at zero and have param's shape and dtype.
func (o OptimizerStep) Apply(param, grad, state0, state1 *Tensor) error {
	op := o.Kind.String() + " step"
	h, dev, err := tensorArgs(op, []string{"param", "grad", "state0", "state1"},
		[]bool{false, false, false, true}, param, grad, state0, state1)
	if err != nil {
		return err
	}
	d := C.pv_optim_desc{
		kind: C.pv_optimizer(o.Kind), lr: C.double(o.LR), momentum: C.double(o.Momentum),
		weight_decay: C.double(o.WeightDecay), eta: C.double(o.Eta),
		beta1: C.double(o.Beta1), beta2: C.double(o.Beta2), eps: C.double(o.Eps),
		step: C.int64_t(o.Step),
	}
	if o.Nesterov {
		d.nesterov = 1
	}
	if o.Exclude {
		d.exclude = 1
	}
	err = call(op, func() C.pv_status {
		return C.pv_optimizer_step(dev.ptr, &d, h[0], h[1], h[2], h[3])
	})
	runtime.KeepAlive(ts(param, grad, state0, state1))
	return err
}
