package egress

// Base is what GitHub's runner must reach to take a job, report it and use
// GitHub's own services, after GitHub's documentation of what self-hosted
// runners communicate with ("Communicating with self-hosted runners"):
// essential operations, downloading actions, job summaries, logs,
// artifacts and caches, runner updates, OIDC tokens, and GitHub Packages
// and its container registry. Git LFS and Dependabot's hosts are not in
// it; a policy that needs them lists them. `tandem egress base` prints it.
var Base = []string{
	// essential operations, OIDC tokens, pipelines and results
	"github.com",
	"api.github.com",
	"*.actions.githubusercontent.com",
	// downloading actions
	"codeload.github.com",
	"pkg.actions.githubusercontent.com",
	// job summaries, logs, artifacts and caches
	"results-receiver.actions.githubusercontent.com",
	"*.blob.core.windows.net",
	// runner updates
	"objects.githubusercontent.com",
	"objects-origin.githubusercontent.com",
	"github-releases.githubusercontent.com",
	"github-registry-files.githubusercontent.com",
	// GitHub Packages and its container registry
	"*.pkg.github.com",
	"pkg-containers.githubusercontent.com",
	"ghcr.io",
}
