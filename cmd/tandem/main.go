// Command tandem is Tandem's one operator binary.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandem-ci/tandem/internal/config"
)

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error // printed unless nil
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

type globals struct {
	dataDir  string
	logLevel string
	log      *slog.Logger
}

func main() {
	g := &globals{}
	root := &cobra.Command{
		Use:           "tandem",
		Short:         "Tandem runs every CI job in its own fresh microVM",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			g.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			slog.SetDefault(g.log)
			return nil
		},
	}
	defData := os.Getenv("TANDEM_DATA_DIR")
	if defData == "" {
		defData = "/var/lib/tandem"
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", defData, "where Tandem keeps images and VM state ($TANDEM_DATA_DIR)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error")
	root.AddCommand(runCmd(g), imageCmd(g), gcCmd(g), benchCmd(g), serverCmd(g), upCmd(g), agentCmd(g), agentWatchdogCmd(g), devCmd(g), dbCmd(g), initCmd(g), depsCmd(), versionCmd())
	root.AddCommand(opsCommands(g)...)
	root.AddCommand(doctorCmd(g))

	err := root.Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "tandem:", ee.err)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "tandem:", err)
	os.Exit(125)
}

// version is set at link time (-ldflags "-X main.version=…").
var version = "dev"

// processStarted is about when this process started (restarts are timed
// from it).
var processStarted = time.Now()

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, args []string) { fmt.Println("tandem", version) },
	}
}

func requireRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root (it manages VMs, TAP devices and cgroups): run it with sudo", what)
	}
	return nil
}

// loadConfig loads the config and the data directory it means: its
// data_dir, else --data-dir.
func loadConfig(g *globals, cfgPath string) (*config.Config, string, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, "", firstRun(err)
	}
	dataDir := cfg.DataDir
	if dataDir == "" {
		dataDir = g.dataDir
	}
	return cfg, dataDir, nil
}
