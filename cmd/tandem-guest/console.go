package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// console writes the guest's own status lines. As PID 1 it is the VM's
// console: an emulated UART that costs time per byte under TCG, so lines are
// short and each stage prints one. Every line is a single Write, prefixed
// "tandem-guest:" and stamped with the kernel's uptime so that it lines up
// with the kernel's own "[    1.234567]" messages.
type console struct {
	mu     sync.Mutex
	w      io.Writer
	uptime func() time.Duration // nil: no stamp
}

const logPrefix = "tandem-guest: "

func newConsole(w io.Writer, uptime func() time.Duration) *console {
	return &console{w: w, uptime: uptime}
}

// logf prints one status line.
func (c *console) logf(format string, args ...any) {
	c.line("", format, args...)
}

// fatalf prints a line marked fatal; the host looks for it in the console tail.
func (c *console) fatalf(format string, args ...any) {
	c.line("fatal: ", format, args...)
}

// raw prints s as is, on its own line.
func (c *console) raw(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, s+"\n")
}

func (c *console) line(kind, format string, args ...any) {
	var b strings.Builder
	b.WriteString(logPrefix)
	if c.uptime != nil {
		d := c.uptime()
		fmt.Fprintf(&b, "[%d.%03d] ", d/time.Second, (d%time.Second)/time.Millisecond)
	}
	b.WriteString(kind)
	fmt.Fprintf(&b, format, args...)
	s := strings.TrimRight(b.String(), "\n") + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, s)
}

// ms renders a duration compactly for console lines.
func ms(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

// fatalHook reports a panic on the console and powers the VM off; boot sets
// it before starting any goroutine. As PID 1 an unrecovered panic would
// otherwise end init and panic the kernel.
var fatalHook func(error)

// goSafe runs f in a goroutine whose panic goes to fatalHook.
func goSafe(f func()) {
	hook := fatalHook
	go func() {
		if hook != nil {
			defer func() {
				if r := recover(); r != nil {
					hook(fmt.Errorf("panic: %v\n%s", r, debug.Stack()))
				}
			}()
		}
		f()
	}()
}
