package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// sshFailed is the exit status when no session ran (as ssh's 255).
const sshFailed = 255

func sshCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var command string
	var forceTTY, noTTY bool
	cmd := &cobra.Command{
		Use:     "ssh JOB|RUNNER | ssh ls",
		Aliases: []string{"debug"},
		Short:   "Open a shell in a running job's VM (or run one command: --command)",
		Long: "Open an interactive shell in a running job's VM, as the job's user, beside the\n" +
			"job: carried over the control plane's and the agent's own connections (no SSH\n" +
			"daemon, nothing listening in the VM). Exit the shell (or ^D) to leave; the job\n" +
			"goes on. With --command, run one command and exit with its status. A runner's\n" +
			"name (as tandem-debug-pause prints it in a job's log) names its job too.\n\n" +
			"`tandem ssh ls` lists the jobs you may open a session in. An admin token may\n" +
			"open one in any job; a read token scoped to organisations, in their jobs when\n" +
			"the config's debug.orgs lists them. Every session is in the audit log.",
		Args: cobra.ExactArgs(1),
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		if args[0] == "ls" {
			return sshList(cmd, o, c)
		}
		id, err := sshTarget(cmd, c, args[0])
		if err != nil {
			return err
		}
		stdinTTY := term.IsTerminal(int(os.Stdin.Fd()))
		tty := command == "" && stdinTTY
		if forceTTY {
			tty = true
		}
		if noTTY {
			tty = false
		}
		if tty && !stdinTTY {
			return errors.New("-t: standard input is not a terminal")
		}
		code, err := runSSH(cmd.Context(), c, id, command, tty, os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr())
		if err != nil {
			return &exitError{code: sshFailed, err: err}
		}
		if code != 0 {
			return &exitError{code: code}
		}
		return nil
	})
	o.register(cmd, true) // --json: for ls
	cmd.Flags().StringVarP(&command, "command", "c", "", "run this command (with sh -c) instead of a shell, and exit with its status")
	cmd.Flags().BoolVarP(&forceTTY, "tty", "t", false, "give the command a terminal (the default for a shell from a terminal)")
	cmd.Flags().BoolVarP(&noTTY, "no-tty", "T", false, "no terminal: plain pipes, for scripts")
	return cmd
}

func sshList(cmd *cobra.Command, o *apiOptions, c *apiclient.Client) error {
	var res struct {
		Jobs []controlplane.DebuggableView `json:"jobs"`
	}
	if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/ssh", nil, nil, &res); printed || err != nil {
		return err
	}
	if len(res.Jobs) == 0 {
		fmt.Fprintln(cmd.ErrOrStderr(), "no running job you may open a session in")
		return nil
	}
	now := time.Now()
	tb := termtext.NewTable(cmd.OutOrStdout(), "JOB", "REPO", "NAME", "STATE", "ARCH", "HOST", "RUNNING", "COMMAND")
	for _, j := range res.Jobs {
		tb.Row(strconv.FormatInt(j.Job, 10), j.Repo, termtext.Cut(j.Name, 40), j.State, j.Arch, j.Host,
			termtext.Ago(now, j.Since), j.Command)
	}
	return tb.Flush()
}

// sshTarget is the job a session goes into: a job id, or the job of a
// runner's name (among those the token may open a session in).
func sshTarget(cmd *cobra.Command, c *apiclient.Client, arg string) (int64, error) {
	if _, err := strconv.ParseInt(arg, 10, 64); err == nil {
		return parseJobID(arg)
	}
	var res struct {
		Jobs []controlplane.DebuggableView `json:"jobs"`
	}
	if _, err := c.Call(cmd.Context(), http.MethodGet, "/api/v1/ssh", nil, nil, &res); err != nil {
		return 0, err
	}
	for _, j := range res.Jobs {
		if j.Runner == arg {
			return j.Job, nil
		}
	}
	return 0, fmt.Errorf("%q: not a job id, nor the runner of a running job you may open a session in (tandem ssh ls lists them)", arg)
}

// runSSH runs one session in job id's VM and returns its exit status; an
// error means none ran to its end.
func runSSH(ctx context.Context, c *apiclient.Client, id int64, command string, tty bool, in *os.File, out, errOut io.Writer) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, apiclient.Timeout)
	conn, err := c.Dial(dctx, "/api/v1/jobs/"+strconv.FormatInt(id, 10)+"/ssh")
	dcancel()
	if err != nil {
		return 0, err
	}
	defer conn.Close("client done")
	open := agentapi.ExecOpen{TTY: tty}
	if command != "" {
		open.Argv = []string{"sh", "-c", command}
	}
	fd := int(in.Fd())
	if tty {
		open.Term = os.Getenv("TERM")
		if cols, rows, err := term.GetSize(fd); err == nil {
			open.Rows, open.Cols = uint16(rows), uint16(cols)
		}
	}
	if err := agentapi.WriteJSON(ctx, conn, agentapi.ExecMsgOpen, open); err != nil {
		return 0, fmt.Errorf("opening the session: %w", err)
	}
	if tty {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return 0, fmt.Errorf("terminal: %w", err)
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					if cols, rows, err := term.GetSize(fd); err == nil {
						agentapi.WriteJSON(ctx, conn, agentapi.ExecMsgResize, agentapi.ExecSize{Rows: uint16(rows), Cols: uint16(cols)})
					}
				}
			}
		}()
	} else {
		// Without a terminal, ^C here ends the session (its processes are
		// killed) rather than only this process.
		intr := make(chan os.Signal, 1)
		signal.Notify(intr, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(intr)
		go func() {
			select {
			case <-intr:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	go func() {
		// Input as it comes; its end is the session's end of input.
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if conn.Write(ctx, agentapi.ExecMsgStdin, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				conn.Write(ctx, agentapi.ExecMsgEOF, nil)
				return
			}
		}
	}()
	for {
		k, p, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return 0, errors.New("session interrupted")
			}
			return 0, fmt.Errorf("the session broke off: %w", err)
		}
		switch k {
		case agentapi.ExecMsgStdout:
			out.Write(p)
		case agentapi.ExecMsgStderr:
			errOut.Write(p)
		case agentapi.ExecMsgExit:
			var res agentapi.ExecResult
			if err := json.Unmarshal(p, &res); err != nil {
				return 0, fmt.Errorf("the session's end: %w", err)
			}
			if res.Error != "" {
				if res.Code == 0 {
					res.Code = sshFailed
				}
				if tty {
					io.WriteString(errOut, "\r\n")
				}
				fmt.Fprintf(errOut, "tandem ssh: %s\n", termtext.Clean(res.Error))
			}
			return res.Code, nil
		}
	}
}
