package image

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os/exec"
	"testing"
)

// lz4Literals encodes src as one LZ4 block of literals only.
func lz4Literals(src []byte) []byte {
	return lz4Sequence(nil, src, 0, 0)
}

// lz4Sequence appends one LZ4 sequence: literals, then (if matchLen > 0) a
// match of matchLen bytes at offset back.
func lz4Sequence(dst, lit []byte, offset, matchLen int) []byte {
	lenField := func(n int) (nibble byte, extra []byte) {
		if n < 15 {
			return byte(n), nil
		}
		for n -= 15; n >= 255; n -= 255 {
			extra = append(extra, 255)
		}
		return 15, append(extra, byte(n))
	}
	ln, lextra := lenField(len(lit))
	var mn byte
	var mextra []byte
	if matchLen > 0 {
		mn, mextra = lenField(matchLen - 4)
	}
	dst = append(dst, ln<<4|mn)
	dst = append(dst, lextra...)
	dst = append(dst, lit...)
	if matchLen > 0 {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(offset))
		dst = append(dst, mextra...)
	}
	return dst
}

// lz4Compress is a small greedy LZ4 block compressor (one candidate per
// 4-byte hash), enough to produce long, far and overlapping matches.
func lz4Compress(src []byte) []byte {
	var out []byte
	last := map[uint32]int{}
	anchor, i := 0, 0
	for i+12 < len(src) {
		k := binary.LittleEndian.Uint32(src[i:])
		cand, ok := last[k]
		last[k] = i
		if !ok || i-cand > 65535 {
			i++
			continue
		}
		m := 4
		for i+m < len(src)-5 && src[cand+m] == src[i+m] {
			m++
		}
		out = lz4Sequence(out, src[anchor:i], i-cand, m)
		i += m
		anchor = i
	}
	return lz4Sequence(out, src[anchor:], 0, 0)
}

func legacyFrame(blocks ...[]byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for _, b := range blocks {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	return out
}

func TestLZ4HandWritten(t *testing.T) {
	long := bytes.Repeat([]byte("tandem"), 100) // 600 literals: extended length
	// "ab", then a match of 10 at offset 2 (overlapping what it copies:
	// "ab" * 6), then 4 at offset 12 (not overlapping), then "!".
	match := []byte{0x26, 'a', 'b', 2, 0, 0x00, 12, 0, 0x10, '!'}
	frame := legacyFrame(lz4Literals(long), match)
	got, err := lz4LegacyDecode(frame)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, long...), []byte("abababababababab!")...)
	if !bytes.Equal(got, want) {
		t.Fatalf("decoded …%q, want …%q", got[max(0, len(got)-20):], want[len(want)-20:])
	}
	// An overlapping match with an extended length: one "z", then 300
	// more at offset 1.
	run := lz4Sequence(nil, []byte("z"), 1, 300)
	run = lz4Sequence(run, []byte("."), 0, 0)
	if got, err := lz4LegacyDecode(legacyFrame(run)); err != nil || string(got) != string(bytes.Repeat([]byte("z"), 301))+"." {
		t.Errorf("run of 301: %d bytes, %v", len(got), err)
	}
	// The kernel build appends the uncompressed size: checked when present.
	withSize := binary.LittleEndian.AppendUint32(append([]byte{}, frame...), uint32(len(want)))
	if _, err := lz4LegacyDecode(withSize); err != nil {
		t.Errorf("with a matching size trailer: %v", err)
	}
	badSize := binary.LittleEndian.AppendUint32(append([]byte{}, frame...), uint32(len(want)+1))
	if _, err := lz4LegacyDecode(badSize); err == nil {
		t.Error("a wrong size trailer was accepted")
	}
	// Two concatenated streams decode to the two contents in a row.
	two := append(legacyFrame(lz4Literals([]byte("one "))), legacyFrame(lz4Literals([]byte("two")))...)
	if got, err := lz4LegacyDecode(two); err != nil || string(got) != "one two" {
		t.Errorf("concatenated streams: %q, %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"not lz4":            []byte("hello world"),
		"offset 0":           legacyFrame([]byte{0x11, 'a', 0, 0, '!'}),
		"offset too large":   legacyFrame([]byte{0x11, 'a', 9, 0, '!'}),
		"truncated literals": legacyFrame([]byte{0x50, 'a', 'b'}),
		"truncated offset":   legacyFrame([]byte{0x11, 'a', 1}),
		"truncated length":   legacyFrame([]byte{0xf0, 255}),
		"block over 8 MiB":   legacyFrame(lz4Sequence(nil, []byte("x"), 1, 8<<20)),
	} {
		if _, err := lz4LegacyDecode(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// testData mixes what a kernel has: runs of zeros, repeated text, random
// bytes, and a chunk repeated far back.
func testData(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b []byte
	for len(b) < n {
		switch r.IntN(4) {
		case 0:
			b = append(b, make([]byte, r.IntN(5000))...)
		case 1:
			b = append(b, bytes.Repeat([]byte("virtio_ring virtio "), r.IntN(40))...)
		case 2:
			for range r.IntN(3000) {
				b = append(b, byte(r.Uint32()))
			}
		case 3:
			if len(b) > 70000 {
				at := len(b) - 60000 - r.IntN(5000)
				b = append(b, b[at:at+r.IntN(2000)]...)
			}
		}
	}
	return b[:n]
}

func TestLZ4RoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 13, 100, 70000, 1 << 20} {
		src := testData(n)
		got, err := lz4LegacyDecode(legacyFrame(lz4Compress(src)))
		if err != nil || !bytes.Equal(got, src) {
			t.Errorf("%d bytes: round trip gave %d bytes, %v", n, len(got), err)
		}
	}
	// Several blocks, as the legacy format cuts streams into 8 MiB pieces.
	a, b := testData(1<<20), testData(3000)
	got, err := lz4LegacyDecode(legacyFrame(lz4Compress(a), lz4Compress(b)))
	if err != nil || !bytes.Equal(got, append(a, b...)) {
		t.Errorf("two blocks: %d bytes, %v", len(got), err)
	}
}

// TestLZ4ReferenceEncoder decodes what the lz4 tool writes in the legacy
// format (as the kernel build does), more than one 8 MiB block of it.
func TestLZ4ReferenceEncoder(t *testing.T) {
	lz4, err := exec.LookPath("lz4")
	if err != nil {
		t.Skip("the lz4 tool (Debian package lz4) is not installed")
	}
	src := testData(9<<20 + 12345)
	cmd := exec.Command(lz4, "-l", "-9", "-c")
	cmd.Stdin = bytes.NewReader(src)
	enc, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := lz4LegacyDecode(enc)
	if err != nil || !bytes.Equal(got, src) {
		t.Fatalf("lz4 -l output: decoded %d bytes of %d, %v", len(got), len(src), err)
	}
}
