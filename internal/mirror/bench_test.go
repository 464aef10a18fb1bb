package mirror

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/ociimage"
)

// BenchmarkPull pulls an image of about 5 MiB (busybox and 4 MiB of random
// data) straight from the upstream ("direct", the baseline), through the
// mirror when it has to fetch it ("first": a new image each time, its push
// not timed), and through the mirror from its cache ("cached"). As root the
// upstream is in its own network namespace behind a veth pair; else on
// loopback. Run: go test -run '^$' -bench Pull -benchtime 10x ./internal/mirror/
func BenchmarkPull(b *testing.B) {
	up := startUpstream(b)
	cache := b.TempDir()
	m := startMirror(b, up, cache, nil)
	ctx := context.Background()
	client := &http.Client{Timeout: time.Minute}
	const size = 4 << 20

	seq := 0
	push := func() (string, *ociimage.Image) {
		im := busybox(b, size)
		seq++
		repo := fmt.Sprintf("bench/img%d", seq)
		if err := im.Push(ctx, client, up.url, repo, "v1"); err != nil {
			b.Fatal(err)
		}
		return repo, im
	}
	// settle waits until the mirror has stored what it served.
	settle := func(base, repo string, im *ociimage.Image) {
		if base == m.URL() {
			waitCached(b, cache, repo, im)
			up.quiet()
		}
	}
	run := func(b *testing.B, base string, fresh bool) {
		repo, im := push()
		n, err := pull(ctx, client, base, repo, im.Digest(), im.Digest()) // warm (and sized)
		if err != nil {
			b.Fatal(err)
		}
		settle(base, repo, im)
		b.SetBytes(n)
		b.ResetTimer()
		for range b.N {
			if fresh {
				b.StopTimer()
				repo, im = push()
				up.quiet()
				b.StartTimer()
			}
			if _, err := pull(ctx, client, base, repo, im.Digest(), im.Digest()); err != nil {
				b.Fatal(err)
			}
			if fresh {
				b.StopTimer()
				settle(base, repo, im)
				b.StartTimer()
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, up.url, false) })
	b.Run("first", func(b *testing.B) { run(b, m.URL(), true) })
	b.Run("cached", func(b *testing.B) { run(b, m.URL(), false) })
}
