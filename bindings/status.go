package bindings

import "fmt"

// Status is a pv_status code of the C ABI.
type Status int

// The status codes of csrc/polyview.h.
const (
	StatusOK              Status = 0
	StatusInvalidArgument Status = 1
	StatusOutOfMemory     Status = 2
	StatusUnavailable     Status = 3
	StatusUnsupported     Status = 4
	StatusBackend         Status = 5
	StatusNumeric         Status = 6
	StatusInternal        Status = 7
)

var statusText = map[Status]string{
	StatusOK:              "ok",
	StatusInvalidArgument: "invalid argument",
	StatusOutOfMemory:     "out of memory",
	StatusUnavailable:     "unavailable",
	StatusUnsupported:     "unsupported",
	StatusBackend:         "backend failure",
	StatusNumeric:         "numeric error",
	StatusInternal:        "internal error",
}

func (s Status) String() string {
	if t, ok := statusText[s]; ok {
		return t
	}
	return fmt.Sprintf("status %d", int(s))
}

// Error is a failed C ABI call: the Go operation, the status code and the
// backend's message, which names the argument and the problem.
type Error struct {
	Op   string
	Code Status
	Msg  string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return e.Op + ": " + e.Code.String()
	}
	return e.Op + ": " + e.Msg
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, &bindings.Error{Code: bindings.StatusNumeric}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Op == "" && t.Msg == ""
}
