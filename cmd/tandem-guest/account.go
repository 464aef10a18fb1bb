package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// account is a guest user a job runs as.
type account struct {
	name, home, shell string
	uid, gid          uint32
	groups            []uint32
}

// lookupAccount reads name's entry and groups from /etc/passwd and
// /etc/group (tandem-guest is static: os/user parses the files itself).
func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("job user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("job user %q: uid %q gid %q are not numbers", name, u.Uid, u.Gid)
	}
	a := &account{name: name, home: u.HomeDir, uid: uint32(uid), gid: uint32(gid), shell: loginShell(name)}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("job user %q: groups: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			a.groups = append(a.groups, uint32(n))
		}
	}
	return a, nil
}

func (a *account) credential() *syscall.Credential {
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// env is what login would set for the account.
func (a *account) env() map[string]string {
	e := map[string]string{"USER": a.name, "LOGNAME": a.name, "HOME": a.home}
	if a.shell != "" {
		e["SHELL"] = a.shell
	}
	return e
}

// passwdFile is where loginShell looks; tests point it elsewhere.
var passwdFile = "/etc/passwd"

// loginShell is name's shell from the passwd file (os/user does not say),
// or "" when it cannot be read.
func loginShell(name string) string {
	b, err := os.ReadFile(passwdFile)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == name {
			return f[6]
		}
	}
	return ""
}
