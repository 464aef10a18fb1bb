package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The sparse stream carries one file of an image, holes left out: a root
// filesystem of several GiB holds one or two of data. Big-endian uint64s:
//
//	header  "TSPARSE1", the file's size, the offset the stream starts at
//	extent  offset, length (> 0), then length bytes of data; extents are
//	        ascending, do not overlap and lie within [start, size)
//	end     the file's size, 0
//
// The receiver writes the data at its offsets into a file truncated to the
// full size, so the holes stay holes there too. A stream without its end
// was cut off; it can be resumed from any offset the receiver has reached.
const sparseMagic = "TSPARSE1"

var be = binary.BigEndian

// WriteSparse writes f, from offset on, to w as a sparse stream and returns
// the number of data bytes sent. The extents come from SEEK_DATA and
// SEEK_HOLE (a file system without them reports the whole file as data).
func WriteSparse(w io.Writer, f *os.File, offset int64) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	if offset < 0 || offset > size {
		return 0, fmt.Errorf("offset %d outside the file's %d bytes", offset, size)
	}
	var hdr [24]byte
	copy(hdr[:8], sparseMagic)
	be.PutUint64(hdr[8:], uint64(size))
	be.PutUint64(hdr[16:], uint64(offset))
	if _, err := w.Write(hdr[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	var sent int64
	pos := offset
	for pos < size {
		data, err := f.Seek(pos, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break // nothing but a hole from pos to the end
		}
		if err != nil {
			return sent, fmt.Errorf("seek data: %w", err)
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			return sent, fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, size)
		var fh [16]byte
		be.PutUint64(fh[:8], uint64(data))
		be.PutUint64(fh[8:], uint64(hole-data))
		if _, err := w.Write(fh[:]); err != nil {
			return sent, err
		}
		n, err := io.CopyBuffer(onlyWriter{w}, io.NewSectionReader(f, data, hole-data), buf)
		sent += n
		if err == nil && n != hole-data {
			err = fmt.Errorf("file shrank while being sent (%d of %d bytes at %d)", n, hole-data, data)
		}
		if err != nil {
			return sent, err
		}
		pos = hole
	}
	var end [16]byte
	be.PutUint64(end[:8], uint64(size))
	_, err = w.Write(end[:])
	return sent, err
}

// onlyWriter hides a writer's ReadFrom, so that CopyBuffer uses its buffer
// and reads no more than the section.
type onlyWriter struct{ io.Writer }

// recvState is how far the receipt of one file has come: every byte before
// pos is in the file and queued for the hash. A broken stream resumes at
// pos.
type recvState struct {
	pos      int64
	hs       *hasher
	received int64 // data bytes received
}

// hasher computes a file's sha256 in a goroutine of its own, so that
// hashing (every byte of the file, holes included: the bulk of a sparse
// file's cost) overlaps receiving and writing. It takes the file's bytes
// in order: data in buffers it lends (buffer), holes as counts of zeros.
type hasher struct {
	h    hash.Hash
	jobs chan hashJob
	free chan []byte
	done chan struct{}
	dur  time.Duration // time spent hashing, once done
	once sync.Once
}

type hashJob struct {
	data  []byte // data to hash, then to give back to free
	zeros int64  // or this many zero bytes
}

func newHasher(h hash.Hash, bufSize int) *hasher {
	hs := &hasher{h: h, jobs: make(chan hashJob, 8), free: make(chan []byte, 4), done: make(chan struct{})}
	for i := 0; i < cap(hs.free); i++ {
		hs.free <- make([]byte, bufSize)
	}
	go func() {
		defer close(hs.done)
		for j := range hs.jobs {
			t := time.Now()
			if j.data != nil {
				hs.h.Write(j.data)
				hs.free <- j.data[:cap(j.data)]
			}
			for n := j.zeros; n > 0; {
				k := min(n, int64(len(zeros)))
				hs.h.Write(zeros[:k])
				n -= k
			}
			hs.dur += time.Since(t)
		}
	}()
	return hs
}

// buffer lends a buffer to fill; give it back with data or recycle.
func (hs *hasher) buffer() []byte      { return <-hs.free }
func (hs *hasher) recycle(b []byte)    { hs.free <- b[:cap(b)] }
func (hs *hasher) data(b []byte)       { hs.jobs <- hashJob{data: b} }
func (hs *hasher) hashZeros(n int64)   { hs.jobs <- hashJob{zeros: n} }
func (hs *hasher) close()              { hs.once.Do(func() { close(hs.jobs) }); <-hs.done }
func (hs *hasher) sum() []byte         { hs.close(); return hs.h.Sum(nil) }
func (hs *hasher) took() time.Duration { hs.close(); return hs.dur }

// errMalformed marks a stream that breaks the format: the source is broken,
// and asking again would not help.
var errMalformed = errors.New("malformed sparse stream")

// receiveSparse reads a sparse stream of a file of size bytes, written to f
// (already truncated to size) and hashed, resuming at st.pos. onData is
// called after each chunk. An error wrapping errMalformed or ErrCorrupt is
// the source's fault for good; any other error (a cut stream) may be
// retried from st.pos.
func receiveSparse(r io.Reader, f *os.File, size int64, st *recvState, onData func()) error {
	var hdr [24]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("stream header: %w", eofUnexpected(err))
	}
	if string(hdr[:8]) != sparseMagic {
		return fmt.Errorf("%w: no stream header", errMalformed)
	}
	if got := int64(be.Uint64(hdr[8:])); got != size {
		return fmt.Errorf("%w: the source's copy is %d bytes, the manifest says %d", ErrCorrupt, got, size)
	}
	if start := int64(be.Uint64(hdr[16:])); start != st.pos {
		return fmt.Errorf("%w: the stream starts at %d, not at %d", errMalformed, start, st.pos)
	}
	for {
		var fh [16]byte
		if _, err := io.ReadFull(r, fh[:]); err != nil {
			return fmt.Errorf("stream cut off at %d of %d bytes: %w", st.pos, size, eofUnexpected(err))
		}
		off, n := be.Uint64(fh[:8]), be.Uint64(fh[8:])
		if n == 0 {
			if off != uint64(size) {
				return fmt.Errorf("%w: end marker at %d in a file of %d bytes", errMalformed, off, size)
			}
			if size > st.pos {
				st.hs.hashZeros(size - st.pos)
			}
			st.pos = size
			return nil
		}
		if off < uint64(st.pos) || off > uint64(size) || n > uint64(size)-off {
			return fmt.Errorf("%w: extent %d+%d after %d in a file of %d bytes", errMalformed, off, n, st.pos, size)
		}
		if int64(off) > st.pos {
			st.hs.hashZeros(int64(off) - st.pos)
		}
		st.pos = int64(off)
		for left := int64(n); left > 0; {
			buf := st.hs.buffer()
			k, err := io.ReadFull(r, buf[:min(left, int64(len(buf)))])
			if k > 0 {
				if werr := writeNonZero(f, buf[:k], st.pos); werr != nil {
					st.hs.recycle(buf)
					return &localError{werr}
				}
				st.hs.data(buf[:k])
				st.pos += int64(k)
				st.received += int64(k)
				left -= int64(k)
				onData()
			} else {
				st.hs.recycle(buf)
			}
			if err != nil {
				return fmt.Errorf("stream cut off at %d of %d bytes: %w", st.pos, size, eofUnexpected(err))
			}
		}
	}
}

// zeros feeds holes to the hash.
var zeros = make([]byte, 1<<20)

// writeNonZero writes b at off, skipping the file-aligned 4 KiB blocks (or
// parts of them) that are all zeros: the file was truncated to its full
// size, so they read as zeros anyway and stay holes.
func writeNonZero(f *os.File, b []byte, off int64) error {
	const bs = 4096
	start := -1 // start of the run of non-zero blocks being gathered
	for i := 0; i < len(b); {
		end := min(len(b), i+bs-int((off+int64(i))%bs))
		if bytes.Equal(b[i:end], zeros[:end-i]) {
			if start >= 0 {
				if _, err := f.WriteAt(b[start:i], off+int64(start)); err != nil {
					return err
				}
				start = -1
			}
		} else if start < 0 {
			start = i
		}
		i = end
	}
	if start >= 0 {
		if _, err := f.WriteAt(b[start:], off+int64(start)); err != nil {
			return err
		}
	}
	return nil
}

func eofUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// localError is a failure on this side (a full disk): not the source's,
// and not one a retry mends.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }
