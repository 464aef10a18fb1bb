package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func init() {
	fetchBackoff = 10 * time.Millisecond
	fetchStall = 2 * time.Second
}

// extent is a run of data in a sparse test file.
type extent struct{ off, n int64 }

// sparseImage writes an image into s by hand: a kernel and an initrd of
// random bytes, and a root filesystem of size bytes with data only in
// extents (the rest holes). seed varies the content, so the id.
func sparseImage(t testing.TB, s *Store, seed int64, size int64, extents []extent) *Image {
	t.Helper()
	rnd := rand.New(rand.NewSource(seed))
	work, err := os.MkdirTemp(s.root, "test-")
	if err != nil {
		t.Fatal(err)
	}
	m := Manifest{Schema: 1, Kind: "test", Arch: "amd64", Cmdline: fmt.Sprint(seed), Files: map[string]FileInfo{}}
	for name, n := range map[string]int{VmlinuxFile: 300 << 10, InitrdFile: 70<<10 + 17} {
		b := make([]byte, n)
		rnd.Read(b)
		if err := os.WriteFile(filepath.Join(work, name), b, 0o444); err != nil {
			t.Fatal(err)
		}
		m.Files[name] = FileInfo{SHA256: sha256hex(b), Size: int64(n)}
	}
	f, err := os.OpenFile(filepath.Join(work, RootfsFile), os.O_CREATE|os.O_RDWR, 0o444)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for _, e := range extents {
		for done := int64(0); done < e.n; {
			k := min(e.n-done, int64(len(buf)))
			rnd.Read(buf[:k])
			if _, err := f.WriteAt(buf[:k], e.off+done); err != nil {
				t.Fatal(err)
			}
			done += k
		}
	}
	f.Close()
	sum, err := fileSHA256(filepath.Join(work, RootfsFile))
	if err != nil {
		t.Fatal(err)
	}
	m.Files[RootfsFile] = FileInfo{SHA256: sum, Size: size}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(work, manifestFile), b, 0o444); err != nil {
		t.Fatal(err)
	}
	id := m.ID()
	if err := os.Rename(work, filepath.Join(s.root, "blobs", id)); err != nil {
		t.Fatal(err)
	}
	im, err := s.load(id)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// smallSparse is a 64 MiB root filesystem with data at the start, in the
// middle (unaligned) and at the very end.
var smallSparse = []extent{{0, 1 << 20}, {10<<20 + 123, 3<<20 + 5}, {40 << 20, 64 << 10}, {64<<20 - 4096, 4096}}

func openStores(t testing.TB) (*Store, *Store) {
	t.Helper()
	src, err := Open(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := Open(filepath.Join(t.TempDir(), "dst"))
	if err != nil {
		t.Fatal(err)
	}
	return src, dst
}

func blocks(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

// assertNothingLeft fails t if the store holds any image or fetch leftover.
func assertNothingLeft(t *testing.T, s *Store) {
	t.Helper()
	for _, d := range []string{"blobs", "."} {
		ents, _ := os.ReadDir(filepath.Join(s.root, d))
		for _, e := range ents {
			if d == "blobs" || strings.HasPrefix(e.Name(), ".fetch") {
				t.Errorf("left behind: %s/%s", d, e.Name())
			}
		}
	}
}

func TestFetchRoundTripSparse(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 1, 64<<20, smallSparse)
	var last FetchProgress
	got, err := dst.Fetch(context.Background(), LocalSource{src}, im.ID, func(p FetchProgress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != im.ID || got.Dir != filepath.Join(dst.root, "blobs", im.ID) {
		t.Fatalf("fetched %+v", got)
	}
	if err := got.VerifyFull(); err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range smallSparse {
		data += e.n
	}
	want := data + 300<<10 + 70<<10 + 17
	// Extents are whole blocks on disk: a little more than the data is sent.
	if !last.Finished || last.Done != last.Total || last.Received < want || last.Received > want+int64(len(smallSparse))*8192 {
		t.Errorf("last progress %+v: want finished, about %d data bytes received", last, want)
	}
	// Sparse on the receiving side: no more blocks than the source has.
	sb, db := blocks(t, im.Rootfs()), blocks(t, got.Rootfs())
	if db > sb || db*512 > data+64<<10 {
		t.Errorf("received rootfs has %d blocks, the source %d (data %d bytes)", db, sb, data)
	}
	// Hashed on the way in: stamps are there, the files read-only, the
	// image marked as fetched.
	if _, err := os.Stat(filepath.Join(got.Dir, verifiedFile)); err != nil {
		t.Error(err)
	}
	if !isFetched(got.Dir) {
		t.Error("no fetched marker")
	}
	if fi, _ := os.Stat(got.Rootfs()); fi.Mode().Perm() != 0o444 {
		t.Errorf("rootfs mode %v", fi.Mode())
	}
	if r, err := dst.Resolve(im.ID[:8]); err != nil || r.ID != im.ID {
		t.Errorf("resolve: %v %v", r, err)
	}
	// A second fetch finds it there.
	if _, err := dst.Fetch(context.Background(), failingSource{}, im.ID, nil); err != nil {
		t.Errorf("fetch of a present image: %v", err)
	}
	ents, _ := filepath.Glob(filepath.Join(dst.root, ".fetch*"))
	if len(ents) != 0 {
		t.Errorf("leftovers: %v", ents)
	}
}

// failingSource fails every request.
type failingSource struct{ err error }

func (f failingSource) Manifest(context.Context, string) ([]byte, error) {
	return nil, cmpErr(f.err, errors.New("source down"))
}

func (f failingSource) File(context.Context, string, string, int64) (io.ReadCloser, error) {
	return nil, cmpErr(f.err, errors.New("source down"))
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// A corrupted byte in any file of the source is refused naming the file,
// and nothing is left in the store.
func TestFetchCorruptFile(t *testing.T) {
	for _, name := range []string{VmlinuxFile, InitrdFile, RootfsFile} {
		t.Run(name, func(t *testing.T) {
			src, dst := openStores(t)
			im := sparseImage(t, src, 2, 64<<20, smallSparse)
			f, err := os.OpenFile(filepath.Join(im.Dir, name), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			off := int64(1000)
			if name == RootfsFile {
				off = 40<<20 + 77
			}
			b := []byte{0}
			f.ReadAt(b, off)
			b[0] ^= 0x20
			f.WriteAt(b, off)
			f.Close()
			_, err = dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), im.ID) {
				t.Fatalf("fetch of a corrupt %s: %v, want ErrCorrupt naming the image and file", name, err)
			}
			t.Log(err)
			assertNothingLeft(t, dst)
		})
	}
}

// manifestSource serves another image's manifest for every id.
type manifestSource struct {
	LocalSource
	raw []byte
}

func (m manifestSource) Manifest(context.Context, string) ([]byte, error) { return m.raw, nil }

func TestFetchWrongID(t *testing.T) {
	src, dst := openStores(t)
	a := sparseImage(t, src, 3, 1<<20, []extent{{0, 4096}})
	b := sparseImage(t, src, 4, 1<<20, []extent{{0, 4096}})
	rawB, _ := src.RawManifest(b.ID)
	_, err := dst.Fetch(context.Background(), manifestSource{LocalSource{src}, rawB}, a.ID, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), b.ID) {
		t.Errorf("another image's manifest: %v, want ErrCorrupt saying what it hashes to", err)
	}
	// A manifest naming a file outside the image directory.
	var m Manifest
	json.Unmarshal(rawB, &m)
	m.Files["../evil"] = m.Files[VmlinuxFile]
	evil, _ := json.Marshal(m)
	_, err = dst.Fetch(context.Background(), manifestSource{LocalSource{src}, evil}, m.ID(), nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "../evil") {
		t.Errorf("a manifest naming ../evil: %v", err)
	}
	if _, err := dst.Fetch(context.Background(), LocalSource{src}, "0123456789abcdef", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "0123", "../../etc/passwd", "0123456789ABCDEF"} {
		if _, err := dst.Fetch(context.Background(), LocalSource{src}, bad, nil); err == nil {
			t.Errorf("id %q: no error", bad)
		}
	}
	assertNothingLeft(t, dst)
}

// cutSource cuts each stream of one file after a number of bytes; cuts
// says how many streams it cuts (-1: all).
type cutSource struct {
	LocalSource
	file    string
	after   int64
	mu      sync.Mutex
	cuts    int
	offsets []int64
}

func (c *cutSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	rc, err := c.LocalSource.File(ctx, id, name, offset)
	if err != nil || name != c.file {
		return rc, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offsets = append(c.offsets, offset)
	if c.cuts == 0 {
		return rc, nil
	}
	c.cuts--
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, c.after), errReader{errors.New("connection reset by peer")}), rc}, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// A stream cut off mid-file resumes where it broke.
func TestFetchResumes(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 5, 64<<20, smallSparse)
	cs := &cutSource{LocalSource: LocalSource{src}, file: RootfsFile, after: 2<<20 + 999, cuts: 2}
	got, err := dst.Fetch(context.Background(), cs, im.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.VerifyFull(); err != nil {
		t.Fatal(err)
	}
	if len(cs.offsets) != 3 || cs.offsets[0] != 0 || cs.offsets[1] <= 0 || cs.offsets[2] <= cs.offsets[1] {
		t.Errorf("streams asked from offsets %v: want 0 then resumes further on", cs.offsets)
	}
}

// A stream that always breaks before any data is given up, cleanly.
func TestFetchTruncatedGivesUp(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 6, 64<<20, smallSparse)
	cs := &cutSource{LocalSource: LocalSource{src}, file: RootfsFile, after: 30, cuts: -1}
	_, err := dst.Fetch(context.Background(), cs, im.ID, nil)
	if err == nil || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), RootfsFile) || !strings.Contains(err.Error(), "cut off") {
		t.Fatalf("always-cut stream: %v, want an error naming the file, not ErrCorrupt", err)
	}
	t.Log(err)
	if len(cs.offsets) != fetchAttempts {
		t.Errorf("%d tries, want %d", len(cs.offsets), fetchAttempts)
	}
	assertNothingLeft(t, dst)
}

// goneSource serves a few streams, then is gone.
type goneSource struct {
	LocalSource
	left atomic.Int32
}

func (g *goneSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	if g.left.Add(-1) < 0 {
		return nil, errors.New("dial tcp: connection refused")
	}
	rc, err := g.LocalSource.File(ctx, id, name, offset)
	if err != nil || name != RootfsFile {
		return rc, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, 1<<20), errReader{io.ErrUnexpectedEOF}), rc}, nil
}

// The server gone mid-transfer: a clean error, nothing left, and a later
// fetch works.
func TestFetchServerGone(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 7, 64<<20, smallSparse)
	gs := &goneSource{LocalSource: LocalSource{src}}
	gs.left.Store(3) // kernel, initrd, a piece of the rootfs
	_, err := dst.Fetch(context.Background(), gs, im.ID, nil)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("server gone: %v", err)
	}
	assertNothingLeft(t, dst)
	if _, err := dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

// A stream that stops sending is cut after fetchStall and resumed.
func TestFetchStalled(t *testing.T) {
	old := fetchStall
	fetchStall = 200 * time.Millisecond
	defer func() { fetchStall = old }()
	src, dst := openStores(t)
	im := sparseImage(t, src, 8, 8<<20, []extent{{0, 3 << 20}})
	ss := &stallSource{LocalSource: LocalSource{src}}
	if _, err := dst.Fetch(context.Background(), ss, im.ID, nil); err != nil {
		t.Fatal(err)
	}
	if ss.n.Load() != 2 {
		t.Errorf("%d rootfs streams, want 2 (one stalled)", ss.n.Load())
	}
}

type stallSource struct {
	LocalSource
	n atomic.Int32
}

func (s *stallSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	rc, err := s.LocalSource.File(ctx, id, name, offset)
	if err != nil || name != RootfsFile || s.n.Add(1) > 1 {
		return rc, err
	}
	// 1 MiB, then silence until the reader gives up.
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, 1<<20), ctxReader{ctx}), rc}, nil
}

type ctxReader struct{ ctx context.Context }

func (c ctxReader) Read([]byte) (int, error) {
	<-c.ctx.Done()
	return 0, c.ctx.Err()
}

// countingSource counts requests and can hold streams back.
type countingSource struct {
	LocalSource
	manifests, files atomic.Int32
	gate             chan struct{}
}

func (c *countingSource) Manifest(ctx context.Context, id string) ([]byte, error) {
	c.manifests.Add(1)
	return c.LocalSource.Manifest(ctx, id)
}

func (c *countingSource) File(ctx context.Context, id, name string, offset int64) (io.ReadCloser, error) {
	c.files.Add(1)
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return c.LocalSource.File(ctx, id, name, offset)
}

// Concurrent fetches of one id download it once; a caller that gives up
// does not stop the others; when all give up the download stops and
// leaves nothing.
func TestFetchSingleflight(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 9, 64<<20, smallSparse)
	cs := &countingSource{LocalSource: LocalSource{src}, gate: make(chan struct{})}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	quitter, quit := context.WithCancel(context.Background())
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if i == 0 {
				ctx = quitter
			}
			_, errs[i] = dst.Fetch(ctx, cs, im.ID, nil)
		}()
	}
	time.Sleep(100 * time.Millisecond)
	quit()
	time.Sleep(50 * time.Millisecond)
	close(cs.gate)
	wg.Wait()
	if !errors.Is(errs[0], context.Canceled) {
		t.Errorf("the caller that gave up: %v", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("caller %d: %v", i+1, err)
		}
	}
	if m, f := cs.manifests.Load(), cs.files.Load(); m != 1 || f != 3 {
		t.Errorf("%d manifest and %d file requests, want 1 and 3", m, f)
	}

	// Everybody gives up: the download stops, nothing is left.
	other := sparseImage(t, src, 10, 64<<20, smallSparse)
	cs2 := &countingSource{LocalSource: LocalSource{src}, gate: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst.Fetch(ctx, cs2, other.ID, nil)
		}()
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left, _ := filepath.Glob(filepath.Join(dst.root, ".fetch-*"))
		_, err := os.Stat(filepath.Join(dst.root, "blobs", other.ID))
		if len(left) == 0 && err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("abandoned fetch left %v (blob: %v)", left, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A damaged fetched copy is fetched again; a damaged copy built here is
// the operator's and refused.
func TestFetchReplacesDamagedFetchedCopy(t *testing.T) {
	src, dst := openStores(t)
	im := sparseImage(t, src, 11, 1<<20, []extent{{0, 8192}})
	got, err := dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(got.Rootfs(), 0o644)
	if err := os.WriteFile(got.Rootfs(), []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil); err != nil {
		t.Fatalf("refetch of a damaged copy: %v", err)
	}
	if err := got.VerifyFull(); err != nil {
		t.Fatal(err)
	}
	// Built here (no fetched marker): refused, left alone.
	os.Remove(filepath.Join(got.Dir, fetchedFile))
	os.Chmod(got.Rootfs(), 0o644)
	os.WriteFile(got.Rootfs(), []byte("damaged"), 0o644)
	_, err = dst.Fetch(context.Background(), LocalSource{src}, im.ID, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "was not fetched") {
		t.Errorf("damaged built copy: %v", err)
	}
	if _, err := os.Stat(got.Rootfs()); err != nil {
		t.Errorf("the damaged built copy was touched: %v", err)
	}
}

// The receiver refuses malformed streams without panicking.
func TestReceiveSparseMalformed(t *testing.T) {
	good := func() []byte {
		var b bytes.Buffer
		b.WriteString(sparseMagic)
		for _, v := range []uint64{8192, 0, 100, 10} {
			var x [8]byte
			be.PutUint64(x[:], v)
			b.Write(x[:])
		}
		b.Write(bytes.Repeat([]byte{7}, 10))
		for _, v := range []uint64{8192, 0} {
			var x [8]byte
			be.PutUint64(x[:], v)
			b.Write(x[:])
		}
		return b.Bytes()
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(8192)
	recv := func(b []byte) error {
		st := &recvState{hs: newHasher(sha256.New(), 64)}
		defer st.hs.close()
		return receiveSparse(bytes.NewReader(b), f, 8192, st, func() {})
	}
	if err := recv(good()); err != nil {
		t.Fatalf("good stream: %v", err)
	}
	set := func(at int, v uint64) []byte {
		b := good()
		be.PutUint64(b[at:], v)
		return b
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"magic":          {append([]byte("XSPARSE1"), good()[8:]...), errMalformed},
		"size":           {set(8, 4096), ErrCorrupt},
		"start":          {set(16, 5), errMalformed},
		"beyond the end": {set(24, 8190), errMalformed},
		"huge length":    {set(32, 1<<63), errMalformed},
		"end marker":     {set(24+16+10, 8000), errMalformed},
		"truncated":      {good()[:30], io.ErrUnexpectedEOF},
		"no end":         {good()[:24+16+10], io.ErrUnexpectedEOF},
	}
	for name, c := range cases {
		if err := recv(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	rnd := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		b := good()
		b[rnd.Intn(len(b))] = byte(rnd.Intn(256))
		recv(b[:rnd.Intn(len(b)+1)]) // must not panic
	}
}
