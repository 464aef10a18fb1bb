package jobvm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/syncbuf"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
	"github.com/tandem-ci/tandem/internal/vm"
)

// detachWriter is a job's stdout that lets go of the job (ErrDetached)
// once the job has written until.
type detachWriter struct {
	syncbuf.Buffer
	until  string
	detach context.CancelCauseFunc
}

func (w *detachWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if strings.Contains(w.String(), w.until) {
		w.detach(jobvm.ErrDetached)
	}
	return n, err
}

// runDetached runs r, a resumable job whose VM outlives its owner, and
// detaches it once its stdout shows until. It returns what the caller
// would persist (through JSON, as it would be), the output received, and
// the VM.
func runDetached(t *testing.T, h *jobvm.Host, r jobvm.Request, until string) (jobvm.Detached, *detachWriter, *syncbuf.Buffer, vm.Instance) {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stdout, stderr := &detachWriter{until: until, detach: cancel}, &syncbuf.Buffer{}
	r.Stdout, r.Stderr = stdout, stderr
	r.Resumable, r.DieWithOwner = true, false
	var inst vm.Instance
	r.OnCreate = func(in vm.Instance) { inst = in }
	res, err := h.Run(ctx, r)
	var d *jobvm.Detached
	if !errors.As(err, &d) {
		t.Fatalf("Run: %v (%+v), want it detached; stdout %q", err, res, stdout.String())
	}
	// Should the test fail before the job is reattached, its VM goes anyway.
	t.Cleanup(func() {
		bg := context.Background()
		if in, err := h.Driver.Get(bg, d.VMID); err == nil {
			in.Destroy(bg)
		}
		h.Net.Detach(bg, d.VMID)
	})
	if inst.Info().State != vm.StateRunning {
		t.Fatalf("the VM of a detached job is %s", inst.Info().State)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var kept jobvm.Detached
	if err := json.Unmarshal(b, &kept); err != nil {
		t.Fatal(err)
	}
	return kept, stdout, stderr, inst
}

// reattach takes the job d over in a new host over h's state, as a
// restarted process would, and checks that nothing of its VM remains.
func reattach(t *testing.T, h *jobvm.Host, d jobvm.Detached) (jobvm.Result, *syncbuf.Buffer, *syncbuf.Buffer) {
	t.Helper()
	h2 := testhost.Restart(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, err := h2.Driver.Get(ctx, d.VMID)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncbuf.Buffer
	res, err := h2.Reattach(ctx, inst, d, jobvm.ReattachRequest{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatalf("Reattach: %v (%+v)", err, res)
	}
	if pids := testenv.QEMUPIDs(h2.StateDir); len(pids) > 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", hostnet.TAPName(d.VMID))); err == nil {
		t.Errorf("TAP device %s left", hostnet.TAPName(d.VMID))
	}
	for _, root := range []string{"/sys/fs/cgroup/tandem", "/sys/fs/cgroup/cpu/tandem"} {
		if m, _ := filepath.Glob(filepath.Join(root, "*", d.VMID)); len(m) > 0 {
			t.Errorf("cgroup left: %v", m)
		}
	}
	testhost.AssertEmpty(t, h2)
	return res, &stdout, &stderr
}

// A resumable job goes on while its host process is replaced: detached
// mid-job, its driver closed as the process's exit would, it is taken over
// by a new host with a driver of its own over the same state, and every
// line of its output arrives once, in order, across the two hosts.
func TestReattachAfterRestart(t *testing.T) {
	h := newHost(t)
	r := req()
	const lines = 60
	r.Argv = []string{"sh", "-c", fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "line $i"; `+
		`if [ $((i %% 10)) = 0 ]; then echo "err $i" >&2; fi; i=$((i+1)); sleep 0.25; done; exit 6`, lines)}
	d, out1, err1, _ := runDetached(t, h, r, "line 20\n")
	t.Logf("detached after %d bytes", d.Offset)
	res, out2, err2 := reattach(t, h, d)

	var wantOut, wantErr strings.Builder
	for i := range lines {
		fmt.Fprintf(&wantOut, "line %d\n", i)
		if i%10 == 0 {
			fmt.Fprintf(&wantErr, "err %d\n", i)
		}
	}
	if got := out1.String() + out2.String(); got != wantOut.String() {
		t.Errorf("stdout across the hosts:\n%q\nthen\n%q\nwant\n%q", out1.String(), out2.String(), wantOut.String())
	}
	if got := err1.String() + err2.String(); got != wantErr.String() {
		t.Errorf("stderr across the hosts: %q then %q", err1.String(), err2.String())
	}
	if out2.String() == "" {
		t.Error("the job ended before it was reattached: nothing was resumed mid-job")
	}
	if res.ExitCode != 6 || res.Failure != "" || res.VMID != d.VMID || res.Timings.Run <= 0 {
		t.Errorf("result %+v", res)
	}
}

// A job that ended while no host was attached: a new host gets its exit
// and the output it had not received from its guest, which waited for
// it, or, if the guest gave up waiting and its VM ended, its exit from
// the console.
func TestReattachAfterTheJobEnded(t *testing.T) {
	const lines = 20
	var want strings.Builder
	for i := range lines {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	for _, tc := range []struct {
		name          string
		detachTimeout time.Duration
	}{
		{"guest waits", 2 * time.Minute},
		{"VM ended", time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			r := req()
			r.Argv = []string{"sh", "-c", fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done; exit 3`, lines)}
			r.DetachTimeout = tc.detachTimeout
			d, out1, _, inst := runDetached(t, h, r, "line 0\n")
			deadline := time.Now().Add(2 * time.Minute)
			for {
				b, _ := os.ReadFile(inst.ConsoleLog())
				if strings.Contains(string(b), guest.ExitLinePrefix) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the job did not end; console:\n%s", b)
				}
				time.Sleep(200 * time.Millisecond)
			}
			ended := tc.detachTimeout < time.Minute
			if ended {
				wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_, err := inst.Wait(wctx)
				cancel()
				if err != nil {
					t.Fatalf("the VM did not end past its detach timeout: %v", err)
				}
			}
			res, out2, err2 := reattach(t, h, d)
			if res.ExitCode != 3 || res.Failure != "" {
				t.Errorf("result %+v", res)
			}
			got := out1.String() + out2.String()
			switch {
			case !ended && got != want.String():
				t.Errorf("stdout across the hosts: %q then %q", out1.String(), out2.String())
			case ended && !strings.Contains(err2.String(), "was lost"):
				t.Errorf("stderr %q, want a line saying the output past the detach was lost", err2.String())
			}
		})
	}
}
