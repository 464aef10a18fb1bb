package dashboard

import (
	"context"
	"slices"
	"strings"
)

// The Jobs page's label filter and free-text search are applied here, to
// the jobs the Backend selects with the other filters (org, repository,
// state, arch), newest first. The dashboard reads them in batches and
// keeps the ones that match until it has the page it shows, or until it
// has looked at searchWindow jobs: a search costs at most that many rows,
// however many jobs the store holds, and the page says when it stopped
// early (narrowing by org, repository or state searches further back).

const (
	searchBatch  = 500
	searchWindow = 5000
)

// jobMatch is what the Jobs page's label filter and search ask of a job.
type jobMatch struct {
	Label string   // one of the job's runs-on labels, without case
	Words []string // each in its repository, workflow, name or branch, without case
}

func newJobMatch(label, text string) jobMatch {
	return jobMatch{Label: strings.TrimSpace(label), Words: strings.Fields(strings.ToLower(text))}
}

func (m jobMatch) empty() bool { return m.Label == "" && len(m.Words) == 0 }

func (m jobMatch) match(j Job) bool {
	if m.Label != "" && !slices.ContainsFunc(j.Labels, func(l string) bool { return strings.EqualFold(l, m.Label) }) {
		return false
	}
	if len(m.Words) == 0 {
		return true
	}
	hay := strings.ToLower(j.Repo + "\x00" + j.Workflow + "\x00" + j.Name + "\x00" + j.HeadBranch)
	for _, w := range m.Words {
		if !strings.Contains(hay, w) {
			return false
		}
	}
	return true
}

// searchJobs returns the matching jobs of q's page (q.Offset and q.Limit
// count matching jobs) and whether it stopped at searchWindow before
// finding them all.
func (d *Dashboard) searchJobs(ctx context.Context, s Scope, q JobQuery, m jobMatch) ([]Job, bool, error) {
	want := q.Offset + q.Limit
	var found []Job
	for seen := 0; seen < searchWindow; {
		bq := q
		bq.Offset, bq.Limit = seen, min(searchBatch, searchWindow-seen)
		batch, err := d.be.Jobs(ctx, s, bq)
		if err != nil {
			return nil, false, err
		}
		for _, j := range batch {
			if m.match(j) {
				found = append(found, j)
			}
		}
		seen += len(batch)
		if len(found) >= want || len(batch) < bq.Limit {
			return slice(found, q.Offset, want), false, nil
		}
	}
	return slice(found, q.Offset, want), true, nil
}

func slice(js []Job, from, to int) []Job {
	return js[min(from, len(js)):min(to, len(js))]
}
