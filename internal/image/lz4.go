package image

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The x86 kernel Debian ships is a bzImage whose payload is compressed with
// LZ4 in its legacy frame format. QEMU boots the uncompressed ELF (through
// PVH) faster under TCG than it boots the bzImage, which decompresses itself
// in emulated code, so the image builder unpacks it once at build time.

const (
	lz4LegacyMagic    = 0x184C2102
	lz4LegacyBlockMax = 8 << 20
)

var errLZ4Corrupt = errors.New("lz4: corrupt input")

// lz4LegacyDecode decodes a legacy LZ4 frame: the magic, then blocks, each a
// little-endian uint32 compressed size followed by an LZ4 block that decodes
// to at most 8 MiB. The stream ends at EOF, at another magic (a concatenated
// stream, decoded in turn), or at a trailing uint32 that cannot be a block —
// the kernel build appends the uncompressed size there, which is checked
// when present.
func lz4LegacyDecode(src []byte) ([]byte, error) {
	if len(src) < 4 || binary.LittleEndian.Uint32(src) != lz4LegacyMagic {
		return nil, errors.New("lz4: not a legacy lz4 stream")
	}
	src = src[4:]
	out := make([]byte, 0, 4*len(src))
	for len(src) >= 4 {
		n := binary.LittleEndian.Uint32(src)
		if n == lz4LegacyMagic {
			src = src[4:]
			continue
		}
		if uint64(n) > uint64(len(src)-4) {
			if len(src) == 4 && int(n) != len(out) && n != 0 {
				return nil, fmt.Errorf("lz4: decoded %d bytes, trailer says %d", len(out), n)
			}
			break
		}
		var err error
		if out, err = lz4Block(out, src[4:4+n], lz4LegacyBlockMax); err != nil {
			return nil, err
		}
		src = src[4+n:]
	}
	return out, nil
}

// lz4Block appends the decoding of one LZ4 block to dst. A block may decode
// to at most limit bytes.
func lz4Block(dst, src []byte, limit int) ([]byte, error) {
	start := len(dst)
	i := 0
	readLen := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if i >= len(src) {
				return 0, errLZ4Corrupt
			}
			b := src[i]
			i++
			n += int(b)
			if n > limit {
				return 0, errLZ4Corrupt
			}
			if b != 255 {
				return n, nil
			}
		}
	}
	for i < len(src) {
		token := src[i]
		i++
		lit, err := readLen(int(token >> 4))
		if err != nil {
			return nil, err
		}
		if i+lit > len(src) || len(dst)-start+lit > limit {
			return nil, errLZ4Corrupt
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			break // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, errLZ4Corrupt
		}
		off := int(src[i]) | int(src[i+1])<<8
		i += 2
		m, err := readLen(int(token & 15))
		if err != nil {
			return nil, err
		}
		m += 4
		if off == 0 || off > len(dst)-start || len(dst)-start+m > limit {
			return nil, errLZ4Corrupt
		}
		p := len(dst) - off
		if off >= m {
			dst = append(dst, dst[p:p+m]...)
			continue
		}
		// The match overlaps what it copies (a repeated pattern of
		// period off): byte by byte.
		for k := 0; k < m; k++ {
			dst = append(dst, dst[p+k])
		}
	}
	return dst, nil
}
