package qmp

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
)

// ExecStatus is what the agent reports of a command started with Exec
// (guest-exec-status).
type ExecStatus struct {
	// Exited reports that the command has ended; the other fields are
	// set only then.
	Exited bool
	// ExitCode is the command's exit status when it exited by itself.
	ExitCode int
	// Signal is the signal that ended it (0 when it exited by itself).
	Signal int
	// Out and Err are its standard output and error, as the agent
	// captured them (qemu-ga keeps at most 16 MiB of each; a reply
	// longer than MaxLine fails: run commands that say little).
	Out, Err []byte
}

// Exec starts path with args in the guest (guest-exec, its output
// captured) and returns the agent's id for it, a PID in the guest. Poll
// ExecStatus with it until Exited. An agent that does not know
// guest-exec (before QEMU 2.5) or blocks it (qemu-ga -b, or a
// --allow-rpcs list without it) answers with an *Error.
func (g *GuestAgent) Exec(ctx context.Context, path string, args []string) (pid int, err error) {
	if path == "" {
		return 0, errors.New("qga: guest-exec: no program path given")
	}
	req := struct {
		Path    string   `json:"path"`
		Arg     []string `json:"arg,omitempty"`
		Capture bool     `json:"capture-output"`
	}{path, args, true}
	var r struct {
		PID *int `json:"pid"`
	}
	if err := g.Execute(ctx, "guest-exec", req, &r); err != nil {
		return 0, fmt.Errorf("run %s in the guest: %w", path, err)
	}
	if r.PID == nil || *r.PID <= 0 {
		return 0, fmt.Errorf("run %s in the guest: the agent on %s answered guest-exec without a valid pid (is it a QEMU guest agent?)", path, g.socket)
	}
	return *r.PID, nil
}

// ExecStatus returns the state of the command Exec started as pid
// (guest-exec-status). Once it has reported the command exited, qemu-ga
// forgets the pid: asking again is an *Error.
func (g *GuestAgent) ExecStatus(ctx context.Context, pid int) (ExecStatus, error) {
	var r struct {
		Exited   *bool   `json:"exited"`
		ExitCode *int    `json:"exitcode"`
		Signal   *int    `json:"signal"`
		OutData  *string `json:"out-data"`
		ErrData  *string `json:"err-data"`
	}
	args := map[string]int{"pid": pid}
	if err := g.Execute(ctx, "guest-exec-status", args, &r); err != nil {
		return ExecStatus{}, fmt.Errorf("status of guest command %d: %w", pid, err)
	}
	bad := func(what string) error {
		return fmt.Errorf("status of guest command %d: the agent on %s %s (is it a QEMU guest agent?)", pid, g.socket, what)
	}
	if r.Exited == nil {
		return ExecStatus{}, bad(`answered without "exited"`)
	}
	st := ExecStatus{Exited: *r.Exited}
	if !st.Exited {
		return st, nil
	}
	if r.ExitCode == nil && r.Signal == nil {
		return ExecStatus{}, bad(`reported the command exited with neither "exitcode" nor "signal"`)
	}
	if r.ExitCode != nil {
		st.ExitCode = *r.ExitCode
	}
	if r.Signal != nil {
		st.Signal = *r.Signal
	}
	var err error
	if st.Out, err = decodeExecData(r.OutData); err != nil {
		return ExecStatus{}, bad("sent out-data that is not base64: " + err.Error())
	}
	if st.Err, err = decodeExecData(r.ErrData); err != nil {
		return ExecStatus{}, bad("sent err-data that is not base64: " + err.Error())
	}
	return st, nil
}

func decodeExecData(s *string) ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(*s)
}
