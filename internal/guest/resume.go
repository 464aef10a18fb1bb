package guest

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Limits of resumable jobs (see the package comment).
const (
	// MaxWrite bounds every frame a guest sends on a Resumable job, header
	// included: the guest kernel splits larger writes to a virtio-serial
	// port, and the pieces could reach different hosts.
	MaxWrite = 32 << 10
	// OutputChunk is the most output data one Output frame carries.
	OutputChunk = MaxWrite - frameHeader - outputHeader
	// ResumableExecChunk is the most data one ExecOutput frame carries on
	// a Resumable job (ExecChunk otherwise).
	ResumableExecChunk = MaxWrite - frameHeader - execOutputHeader
	// DefaultDetachTimeout is the guest's wait for ExitAck after a
	// Resumable job's end when Job.DetachTimeoutMS is 0.
	DefaultDetachTimeout = 5 * time.Minute
)

// outputHeader is an Output payload's stream and offset, before its data.
const outputHeader = 9

// ExitLinePrefix starts the console line on which a guest prints a
// Resumable job's Exit as JSON, e.g. `tandem-exit:{"code":0,...}`.
const ExitLinePrefix = "tandem-exit:"

// States of a job in Resumed.
const (
	StateRunning = "running"
	StateExited  = "exited"
)

// Resume is a new host's first frame to a guest running a Resumable job.
type Resume struct {
	// Offset is how much of the job's output the host has: the guest
	// sends again from there (or from its oldest byte, if later).
	Offset int64 `json:"offset"`
}

// Resumed is the guest's answer to Resume.
type Resumed struct {
	State string `json:"state"` // StateRunning or StateExited
	// Exit is how the job ended, when State is StateExited.
	Exit *Exit `json:"exit,omitempty"`
	// Oldest is the offset of the oldest output byte the guest still
	// holds: output before it, and not yet received, was dropped.
	Oldest int64 `json:"oldest"`
}

// EncodeOutput builds an Output payload: stream, offset, then data.
func EncodeOutput(s Stream, offset int64, data []byte) []byte {
	b := make([]byte, outputHeader+len(data))
	b[0] = byte(s)
	binary.BigEndian.PutUint64(b[1:9], uint64(offset))
	copy(b[outputHeader:], data)
	return b
}

// DecodeOutput splits an Output payload. data aliases p.
func DecodeOutput(p []byte) (s Stream, offset int64, data []byte, err error) {
	if len(p) < outputHeader {
		return 0, 0, nil, fmt.Errorf("guest protocol: output frame too short: %d bytes", len(p))
	}
	s = Stream(p[0])
	if s != StreamStdout && s != StreamStderr {
		return 0, 0, nil, fmt.Errorf("guest protocol: unknown stream %d", s)
	}
	offset = int64(binary.BigEndian.Uint64(p[1:9]))
	if offset < 0 {
		return 0, 0, nil, fmt.Errorf("guest protocol: bad output offset %d", offset)
	}
	return s, offset, p[outputHeader:], nil
}

// FrameSize is the number of bytes a frame with a payload of n bytes takes
// on the wire.
func FrameSize(n int) int { return frameHeader + n }
