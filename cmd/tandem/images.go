package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// reloadImagesOnHangup resolves the configured images again on SIGHUP
// (after `tandem image build` moved a ref, or the config names other
// images) and makes the control plane name them: new launches boot the
// new ids, agents prefetch them and drop the old ones once their VMs end.
// Only the runner's images are reloaded; other changes need a restart.
func reloadImagesOnHangup(ctx context.Context, g *globals, cfgPath string, cp *controlplane.Server, st *image.Store, parser *labels.Parser) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := config.Load(cfgPath)
		if err != nil {
			g.log.Error("SIGHUP: config not reloaded; the images stay as they are", "err", err)
			continue
		}
		set, err := controlplane.ResolveImages(st, parser,
			map[arch.Arch]string{arch.AMD64: cfg.Runner.ImageAMD64, arch.ARM64: cfg.Runner.ImageARM64}, cfg.Runner.Images)
		if err != nil {
			g.log.Error("SIGHUP: images not reloaded; they stay as they are", "err", err)
			continue
		}
		cp.SetImages(set)
		g.log.Info("SIGHUP: images reloaded (other settings take a restart)", "images", len(set.List()))
	}
}

func imagesCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the images the control plane names, per architecture and label (agents fetch these)",
		Long: "List the image versions the control plane boots runner VMs from: each architecture's\n" +
			"(runner.image_amd64/arm64) and the runs-on labels' own (runner.images), resolved to ids\n" +
			"when it started or last got SIGHUP. `tandem image list` shows a machine's own store.",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		var res struct {
			Images []controlplane.NamedImage `json:"images"`
		}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/images", nil, nil, &res); printed || err != nil {
			return err
		}
		tb := termtext.NewTable(cmd.OutOrStdout(), "FOR", "REF", "ID", "KIND", "SIZE", "CREATED")
		for _, n := range res.Images {
			who := "arch " + string(n.Arch)
			if n.Label != "" {
				who = n.Label
			}
			id := n.ID
			if id == "" {
				id = "(not in the store: hosts resolve the ref)"
			}
			size := ""
			if n.Size > 0 {
				size = fmt.Sprintf("%.1f GiB", float64(n.Size)/(1<<30))
			}
			created := ""
			if t, err := time.Parse(time.RFC3339, n.Created); err == nil {
				created = t.Local().Format("2006-01-02 15:04")
			}
			tb.Row(who, n.Ref, id, n.Kind, size, created)
		}
		return tb.Flush()
	})
	o.register(cmd, true)
	return cmd
}
