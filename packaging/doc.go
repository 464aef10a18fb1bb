// Package packaging holds what installs Tandem on a host rather than what
// runs: the systemd units (systemd/), the Debian package's control file and
// maintainer scripts (debian/), /etc/default/tandem-agent and the example
// configuration. scripts/package.sh builds the .deb from them. The tests
// here check them as a host uses them: the units against systemd-analyze
// and the binary's own flags, the example config against the config
// package, and the package installed by apt into a clean Debian chroot.
package packaging
