package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/pool"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// TestMetrics scrapes /metrics of a control plane that has an in-process
// host and a remote agent, jobs that ended in several ways and jobs that
// wait, and checks the exposition: the series it should have, promtool's
// lint, no unbounded label values, and the Grafana dashboard's queries.
func TestMetrics(t *testing.T) {
	f, text := metricsFleet(t)
	samples := parseExposition(t, text)

	t.Run("series", func(t *testing.T) {
		for _, c := range []struct {
			series string
			ok     func(float64) bool
		}{
			{`tandem_job_run_seconds_count{arch="amd64",result="success"}`, eq(2)},
			{`tandem_job_run_seconds_count{arch="amd64",result="failure"}`, eq(1)},
			{`tandem_job_run_seconds_count{arch="arm64",result="success"}`, eq(1)},
			{`tandem_job_queue_seconds_count{arch="amd64",result="success"}`, eq(2)},
			{`tandem_job_queue_seconds_count{arch="amd64",result="unschedulable"}`, eq(1)},
			{`tandem_vm_boot_seconds_count{arch="arm64",emulated="true"}`, atLeast(1)}, // a second VM when its runner ends before in_progress is applied (a known case)
			{`tandem_vm_boot_seconds_count{arch="amd64",emulated="false"}`, atLeast(4)},
			{`tandem_queue_depth{arch="amd64"}`, eq(2)},
			{`tandem_queue_depth{arch="arm64"}`, eq(0)},
			{`tandem_queue_depth_by_labels{labels="tandem-1cpu-1gb"}`, eq(2)},
			{`tandem_host_vcpus{host="h1"}`, eq(8)},
			{`tandem_host_vcpus{host="a1"}`, eq(4)},
			{`tandem_host_memory_bytes{host="a1"}`, eq(8 << 30)},
			{`tandem_host_disk_bytes{host="h1"}`, eq(64 << 30)},
			{`tandem_host_load1{host="a1"}`, eq(1.5)},
			{`tandem_host_heartbeat_age_seconds{host="a1"}`, func(v float64) bool { return v >= 0 && v < 5 }},
			{`tandem_host_state{host="a1",state="online"}`, eq(1)},
			{`tandem_profile_samples_total`, eq(0)},
			{`tandem_reconciler_actions_total{action="idle-vms-stopped",reconciler="orphans"}`, eq(0)},
		} {
			v, ok := samples.value(c.series)
			if !ok || !c.ok(v) {
				t.Errorf("%s = %v (present: %v)", c.series, v, ok)
			}
		}
		// The one job still running (its org may run one VM) holds 1
		// vCPU, 1 GiB and 1 GiB of disk on one host.
		for _, c := range []struct {
			name string
			want float64
		}{
			{"tandem_host_vms", 1},
			{"tandem_host_allocated_vcpus", 1},
			{"tandem_host_allocated_memory_bytes", 1 << 30},
		} {
			if got := samples.sum(c.name); got != c.want {
				t.Errorf("sum of %s = %v, want %v", c.name, got, c.want)
			}
		}
		// An in-process agent sends no heartbeats: no load, no age.
		for _, s := range []string{`tandem_host_load1{host="h1"}`, `tandem_host_heartbeat_age_seconds{host="h1"}`} {
			if v, ok := samples.value(s); ok {
				t.Errorf("%s = %v, want no such series", s, v)
			}
		}
	})

	t.Run("promtool", func(t *testing.T) {
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("SKIPPED: promtool is not installed, so /metrics is NOT checked: " +
				"install Debian's prometheus package (scripts/install-deps.sh does)")
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("bounded labels", func(t *testing.T) {
		// No label value names one job, one runner or one repository.
		banned := map[string]string{}
		var jobs []store.Job
		var runners []store.Runner
		err := f.st.View(context.Background(), func(tx store.ReadTx) error {
			var err error
			if jobs, err = tx.Jobs(store.JobFilter{}); err != nil {
				return err
			}
			runners, err = tx.Runners(store.RunnerFilter{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			banned[strconv.FormatInt(j.ID, 10)] = "job id"
			banned[strings.ToLower(j.Repo)] = "repository"
		}
		for _, r := range runners {
			banned[strings.ToLower(r.Name)] = "runner name"
		}
		if len(jobs) < 8 || len(runners) < 5 {
			t.Fatalf("%d jobs, %d runners: the rig did less than it should", len(jobs), len(runners))
		}
		for _, s := range samples {
			for k, v := range s.labels {
				if k == "le" || k == "quantile" {
					continue // bucket bounds, not names
				}
				for b, what := range banned {
					if v == b || (what != "job id" && strings.Contains(strings.ToLower(v), b)) {
						t.Errorf("%s has %s=%q: a %s", s.name, k, v, what)
					}
				}
			}
		}
	})

	t.Run("grafana", func(t *testing.T) { checkDashboard(t, "../../deploy/grafana/tandem.json", samples.names()) })
}

func eq(want float64) func(float64) bool      { return func(v float64) bool { return v == want } }
func atLeast(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }

// metricsFleet builds the rig TestMetrics scrapes and returns the scrape.
func metricsFleet(t *testing.T) (*fleet, string) {
	f := newFleetWith(t, func(c *controlplane.Config) {
		c.Runner.DiskPerVCPU = 1024
		c.Limits = scheduler.Limits{Org: map[string]scheduler.OrgLimit{"slow": {MaxVMs: 1}}}
		// A pool no job uses, holding nothing: its series, at zero.
		c.Pools = []controlplane.PoolSpec{{Label: "tandem-arm64-1cpu-0.25gb", Sizing: pool.Sizing{MaxIdle: 1}, MaxAge: time.Hour}}
	})
	h := newGoHost("h1")
	h.cp = f.cp
	f.hosts = append(f.hosts, h)
	err := f.cp.AttachHost(context.Background(), store.Host{ID: "h1", VCPUs: 8, MemoryMiB: 16 << 10, DiskMiB: 64 << 10,
		Arches: []store.ArchSupport{{Arch: arch.AMD64}, {Arch: arch.ARM64, Emulated: true}}}, h, agentapi.Inventory{})
	if err != nil {
		t.Fatal(err)
	}
	f.joinLoaded("a1", 1.5)
	f.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.gh.AddInstallation("slow", ghfake.AccountOrganization, "slow/app")
	done := []int64{
		f.queue("acme/app", "tandem-2cpu-1gb", "echo ok"),
		f.queue("acme/app", "tandem-2cpu-1gb", "echo ok"),
		f.queue("acme/app", "tandem-2cpu-1gb", "echo failing; exit 3"),
		f.queue("acme/app", "tandem-arm64-2cpu-1gb", "echo arm"),
	}
	huge := f.queue("acme/app", "tandem-64cpu-1gb", "true")
	var slow []int64
	for range 3 {
		slow = append(slow, f.queue("slow/app", "tandem-1cpu-1gb", "sleep 60"))
	}
	f.waitStates(done, 30*time.Second, store.JobCompleted)
	f.waitStates([]int64{huge}, 10*time.Second, store.JobUnschedulable)
	f.waitFor("one slow job running on a started runner, two queued", 20*time.Second, func() bool {
		n := map[store.JobState]int{}
		for _, id := range slow {
			j, _ := f.job(id)
			n[j.State]++
		}
		live := f.liveRunners()
		// The job's in_progress can come before its host's "started"
		// event, which is what observes the VM's boot: wait for both.
		return n[store.JobRunning] == 1 && n[store.JobQueued] == 2 && len(live) == 1 && !live[0].StartedAt.IsZero()
	})
	f.waitFor("a1's heartbeat", 10*time.Second, func() bool {
		v, ok := f.hostView("a1")
		return ok && v.Load1 == 1.5
	})
	resp, err := http.Get(f.web.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return f, string(b)
}

// joinLoaded enrols a remote agent (4 vCPU, 8 GiB, amd64) whose heartbeats
// report load1.
func (f *fleet) joinLoaded(id string, load1 float64) {
	f.t.Helper()
	creds, err := agentapi.Enroll(context.Background(), f.tlsSrv.URL, f.enrollToken(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	h := newGoHost(creds.HostID)
	d := &agentapi.Daemon{Client: agentapi.NewClient(creds), AgentVersion: "test", HeartbeatInterval: fleetHeartbeat,
		Capacity: func() agentapi.Capacity {
			return agentapi.Capacity{VCPUs: 4, MemoryMiB: 8192, Arches: []agentapi.ArchSupport{{Arch: arch.AMD64}}}
		},
		Load: func() float64 { return load1 }}
	h.sink = d.Event
	d.Bind(h)
	ctx, cancel := context.WithCancel(context.Background())
	a := &remoteAgent{id: creds.HostID, host: h, daemon: d, cancel: cancel, done: make(chan error, 1), creds: creds}
	go func() { a.done <- d.Run(ctx) }()
	f.t.Cleanup(func() { a.stop(); h.stopAll() })
	f.hosts = append(f.hosts, h)
	f.waitHost(creds.HostID, "online", true)
}

// sample is one line of a Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type exposition []sample

// parseExposition reads the text format as client_golang writes it:
// `name{k="v",...} value` lines, comments skipped.
func parseExposition(t *testing.T, text string) exposition {
	t.Helper()
	var out exposition
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			t.Fatalf("exposition line %q", line)
		}
		s.name, line = line[:i], line[i:]
		if line[0] == '{' {
			line = line[1:]
			for line[0] != '}' {
				k, rest, ok := strings.Cut(line, `="`)
				if !ok {
					t.Fatalf("labels of %s: %q", s.name, line)
				}
				var v strings.Builder
				j := 0
				for ; rest[j] != '"'; j++ {
					if rest[j] == '\\' {
						j++
						if rest[j] == 'n' {
							v.WriteByte('\n')
							continue
						}
					}
					v.WriteByte(rest[j])
				}
				s.labels[k] = v.String()
				line = strings.TrimPrefix(rest[j+1:], ",")
			}
			line = line[1:]
		}
		var err error
		if s.value, err = strconv.ParseFloat(strings.Fields(line)[0], 64); err != nil {
			t.Fatalf("value of %s: %v", s.name, err)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		t.Fatal("empty exposition")
	}
	return out
}

// key is s as `name{k="v",...}`, labels sorted by name (as
// client_golang writes them).
func (s sample) key() string {
	if len(s.labels) == 0 {
		return s.name
	}
	ks := make([]string, 0, len(s.labels))
	for k := range s.labels {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s=%q", k, s.labels[k])
	}
	return s.name + "{" + strings.Join(parts, ",") + "}"
}

func (e exposition) value(key string) (float64, bool) {
	for _, s := range e {
		if s.key() == key {
			return s.value, true
		}
	}
	return 0, false
}

func (e exposition) sum(name string) float64 {
	total := 0.0
	for _, s := range e {
		if s.name == name {
			total += s.value
		}
	}
	return total
}

func (e exposition) names() map[string]bool {
	m := map[string]bool{}
	for _, s := range e {
		m[s.name] = true
	}
	return m
}

// checkDashboard checks that every query of the Grafana dashboard at path
// names only metrics in exported.
func checkDashboard(t *testing.T, path string, exported map[string]bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				// A datasource variable's query is the kind of data source.
				if s, ok := x.(string); ok && (k == "expr" || k == "query" && v["type"] != "datasource") {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	if len(exprs) < 10 {
		t.Fatalf("%s: %d queries found; the walk is broken or the dashboard is empty", path, len(exprs))
	}
	used := map[string]bool{}
	for _, e := range exprs {
		names := promqlMetrics(e)
		if len(names) == 0 {
			t.Errorf("query %q names no metric", e)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("query %q: the control plane exports no %s", e, n)
			}
		}
	}
	for _, want := range []string{"tandem_queue_depth", "tandem_host_vms", "tandem_host_allocated_vcpus",
		"tandem_job_run_seconds_bucket", "tandem_job_queue_seconds_bucket", "tandem_vm_boot_seconds_bucket",
		"tandem_reconciler_actions_total"} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

// labelValues is Grafana's variable query label_values(metric, label).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)

// promqlMetrics are the metric names in PromQL expression e: identifiers
// outside strings, label matchers, ranges and grouping lists that are
// neither functions, keywords nor Grafana variables.
func promqlMetrics(e string) []string {
	if m := labelValues.FindStringSubmatch(e); m != nil {
		return []string{m[1]}
	}
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"inf": true, "nan": true, "by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true}
	aggregations := map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true,
		"stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true}
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	var names []string
	skipList := false // the next (...) is a grouping or matching list of labels
	for i := 0; i < len(e); {
		c := e[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(e) && e[j] != c {
				if e[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			i = j + 1
		case c == '{' || c == '[' || (c == '(' && skipList):
			end := map[byte]byte{'{': '}', '[': ']', '(': ')'}[c]
			j := i + 1
			for j < len(e) && e[j] != end {
				if q := e[j]; q == '"' || q == '\'' || q == '`' { // a '}' may sit in a string
					for j++; j < len(e) && e[j] != q; j++ {
						if e[j] == '\\' {
							j++
						}
					}
				}
				j++
			}
			skipList = false
			i = j + 1
		case c == '$': // a Grafana variable: $name, ${name}, [[name]]
			j := i + 1
			for j < len(e) && (isIdent(e[j], false) || e[j] == '{' || e[j] == '}') {
				j++
			}
			i = j
		case c >= '0' && c <= '9' || c == '.': // a number or a duration
			j := i + 1
			for j < len(e) && (isIdent(e[j], false) || e[j] == '.') {
				j++
			}
			i = j
		case isIdent(c, true):
			j := i + 1
			for j < len(e) && isIdent(e[j], false) {
				j++
			}
			word := e[i:j]
			k := j
			for k < len(e) && e[k] == ' ' {
				k++
			}
			switch {
			case keywords[strings.ToLower(word)]:
				skipList = word != "and" && word != "or" && word != "unless" && word != "bool" && word != "offset"
			case k < len(e) && e[k] == '(' || aggregations[word]:
				// a function, or an aggregation (which a grouping may follow)
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func TestPromQLMetrics(t *testing.T) {
	for e, want := range map[string]string{
		`histogram_quantile(0.95, sum by (le, arch) (rate(tandem_job_run_seconds_bucket{result=~"succ{ess"}[$__rate_interval])))`: "tandem_job_run_seconds_bucket",
		`sum(tandem_host_allocated_vcpus{host=~"$host"}) / ignoring(x) sum(tandem_host_vcpus) > bool 0.5`:                         "tandem_host_allocated_vcpus tandem_host_vcpus",
		`topk(10, tandem_queue_depth_by_labels) or on() vector(0)`:                                                                "tandem_queue_depth_by_labels",
		`sum(rate(tandem_webhooks_total[5m] offset 1h)) without (result)`:                                                         "tandem_webhooks_total",
		`label_values(tandem_host_vcpus, host)`:                                                                                   "tandem_host_vcpus",
		`1e3 * tandem_store_up`:                                                                                                   "tandem_store_up",
	} {
		if got := strings.Join(promqlMetrics(e), " "); got != want {
			t.Errorf("promqlMetrics(%q) = %q, want %q", e, got, want)
		}
	}
}
