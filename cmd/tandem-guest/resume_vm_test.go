//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// TestResumeOnVM proves the virtio-serial semantics the resumable protocol
// is built on, with this tree's tandem-guest in a real VM (the test image,
// under TCG): hosts close the guest channel's socket mid-job and connect
// again, the job goes on, each new host resumes where it stopped, and the
// last gets the whole output, Exit, and a VM that powers off on ExitAck.
func TestResumeOnVM(t *testing.T) {
	testenv.RequireVM(t)
	st := testimages.Store(t)
	a := arch.Host()
	im, err := st.Resolve("test-" + string(a))
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.ShortTempDir(t)
	d, err := qemu.New(qemu.Config{StateDir: dir, Limits: vm.Limits{VCPUs: 1, MemoryMiB: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in, err := d.Create(ctx, vm.Spec{
		ID: vm.NewID(), Arch: a, VCPUs: 1, MemoryMiB: 256,
		Kernel: im.Kernel(), Initrd: im.Initrd(), BaseDisk: im.Rootfs(), Accel: vm.AccelTCG,
		Cmdline: guest.BootParams{Root: qemu.RootDevice}.Cmdline(),
		Owner:   "agent", DieWithOwner: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Destroy(context.Background()) })
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	console := func() string {
		b, _ := os.ReadFile(in.ConsoleLog())
		return string(b)
	}
	connect := func() *testHost {
		t.Helper()
		rw, err := in.GuestChannel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nc := rw.(net.Conn)
		nc.SetDeadline(time.Now().Add(3 * time.Minute))
		return &testHost{t: t, nc: nc, c: guest.NewConn(nc)}
	}
	resume := func(o *jobOutput) *testHost {
		t.Helper()
		h := connect()
		go h.c.WriteJSON(guest.FrameResume, guest.Resume{Offset: o.next})
		h.read(o, func() bool { return h.resumed })
		t.Logf("resumed at %d: %+v, after %d earlier frames %v", o.next, o.resumed[len(o.resumed)-1], len(h.stale), h.stale)
		return h
	}

	h := connect()
	hello, err := h.c.ReadHello()
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, console())
	}
	if !hello.Has(guest.FeatureResume) {
		t.Fatalf("hello features %v", hello.Features)
	}
	h.resumed = true
	// Output of more than 32 KiB at once first: frames that fill a write.
	const lines = 40
	script := fmt.Sprintf(`head -c 100000 /dev/zero | tr '\0' x; echo; i=0; while [ $i -lt %d ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.1; done; exit 5`, lines)
	if err := h.c.WriteJSON(guest.FrameJob, guest.Job{Argv: []string{"/bin/sh", "-c", script}, Resumable: true, DetachTimeoutMS: 120000}); err != nil {
		t.Fatal(err)
	}
	o := &jobOutput{}
	h.read(o, func() bool { return strings.Contains(o.stdout.String(), "line 3\n") })
	h.nc.Close()
	time.Sleep(time.Second)

	h = resume(o)
	at := o.next
	h.read(o, func() bool { return o.next >= at+50 })
	h.nc.Close()

	// The job ends with no host connected.
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(console(), guest.ExitLinePrefix) {
		if time.Now().After(deadline) {
			t.Fatalf("the job did not end; console:\n%s", console())
		}
		time.Sleep(100 * time.Millisecond)
	}
	h = resume(o)
	h.read(o, func() bool { return o.exit != nil })
	h.ack()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if _, err := in.Wait(wctx); err != nil {
		t.Fatalf("the VM did not power off after ExitAck: %v\nconsole:\n%s", err, console())
	}

	var wantOut, wantErr strings.Builder
	wantOut.WriteString(strings.Repeat("x", 100000) + "\n")
	for i := range lines {
		fmt.Fprintf(&wantOut, "line %d\n", i)
		fmt.Fprintf(&wantErr, "err %d\n", i)
	}
	if o.stdout.String() != wantOut.String() || o.stderr.String() != wantErr.String() {
		t.Errorf("output not whole: stdout %d bytes, stderr %q\nconsole:\n%s", o.stdout.Len(), o.stderr.String(), console())
	}
	if o.exit.Code != 5 {
		t.Errorf("exit %+v", *o.exit)
	}
	if len(o.resumed) != 2 || o.resumed[0].State != guest.StateRunning || o.resumed[1].State != guest.StateExited ||
		o.resumed[1].Exit == nil || o.resumed[1].Exit.Code != 5 || o.resumed[1].Oldest != 0 {
		t.Errorf("resumed %+v", o.resumed)
	}
	if len(o.gaps) != 0 {
		t.Errorf("gaps %v", o.gaps)
	}
	if o.maxFrame != guest.MaxWrite {
		t.Logf("largest frame %d bytes", o.maxFrame)
	}
	t.Logf("console:\n%s", console())
}
