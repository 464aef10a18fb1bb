package main

import "github.com/tandem-ci/tandem/internal/guest"

// defaultRingSize is how much of a Resumable job's most recent output the
// guest keeps to send again to a host that resumes.
const defaultRingSize = 8 << 20

// outRing holds a job's most recent output, both streams, in order, by
// offset: the count of output bytes before it since the job started. It
// keeps at most limit bytes, dropping the oldest first, so that writing to
// it never waits. It is not safe for concurrent use: its owner locks.
type outRing struct {
	limit  int
	chunks []outChunk // in offset order, contiguous
	held   int        // bytes in chunks
	oldest int64      // offset of the first byte held
	end    int64      // offset after the last byte written
}

// outChunk is consecutive output of one stream. Bytes in data are never
// modified once added (data is only resliced or appended to), so they may
// be handed out without a copy.
type outChunk struct {
	stream guest.Stream
	off    int64
	data   []byte
}

func newOutRing(limit int) *outRing {
	if limit <= 0 {
		limit = defaultRingSize
	}
	return &outRing{limit: limit}
}

// add appends a copy of p as output of stream s, dropping the oldest
// output beyond the limit.
func (r *outRing) add(s guest.Stream, p []byte) {
	if len(p) == 0 {
		return
	}
	if n := len(r.chunks); n > 0 && r.chunks[n-1].stream == s && len(r.chunks[n-1].data)+len(p) <= guest.OutputChunk {
		// Small writes of a stream make one chunk, and then one frame.
		// Appending leaves the bytes handed out by next as they are.
		r.chunks[n-1].data = append(r.chunks[n-1].data, p...)
	} else {
		r.chunks = append(r.chunks, outChunk{stream: s, off: r.end, data: append([]byte(nil), p...)})
	}
	r.held += len(p)
	r.end += int64(len(p))
	for r.held > r.limit {
		c := &r.chunks[0]
		drop := min(len(c.data), r.held-r.limit)
		c.data, c.off = c.data[drop:], c.off+int64(drop)
		r.held -= drop
		if len(c.data) == 0 {
			r.chunks[0] = outChunk{}
			r.chunks = r.chunks[1:]
		}
	}
	if len(r.chunks) > 0 {
		r.oldest = r.chunks[0].off
	} else {
		r.oldest = r.end
	}
}

// next returns the output held from offset from on (or from the oldest
// byte held, if later): up to n bytes of one stream, with their offset.
// It returns no data when nothing is held past from.
func (r *outRing) next(from int64, n int) (guest.Stream, int64, []byte) {
	from = max(from, r.oldest)
	if from >= r.end {
		return 0, from, nil
	}
	// Binary search for the chunk holding from.
	lo, hi := 0, len(r.chunks)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if r.chunks[mid].off <= from {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	c := r.chunks[lo]
	d := c.data[from-c.off:]
	return c.stream, from, d[:min(len(d), n)]
}
