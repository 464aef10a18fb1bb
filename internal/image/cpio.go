package image

import (
	"fmt"
	"io"
	"sort"
)

// cpioEntry is one member of a newc cpio archive, the initramfs format.
type cpioEntry struct {
	Name  string // without a leading slash
	Mode  uint32 // type and permission bits, as in stat(2)
	Data  []byte // regular files
	Link  string // symlinks
	Major uint32 // device nodes
	Minor uint32
}

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

// writeCpio writes a newc archive of entries, sorted by name so that the
// same entries always give the same bytes (mtimes are 0, inodes sequential).
func writeCpio(w io.Writer, entries []cpioEntry) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	var off int64
	write := func(b []byte) error {
		n, err := w.Write(b)
		off += int64(n)
		return err
	}
	pad := func() error {
		if r := off % 4; r != 0 {
			return write(make([]byte, 4-r))
		}
		return nil
	}
	emit := func(ino int, e cpioEntry) error {
		body := e.Data
		if e.Mode&0o170000 == modeLink {
			body = []byte(e.Link)
		}
		nlink := 1
		if e.Mode&0o170000 == modeDir {
			nlink = 2
		}
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.Mode, 0, 0, nlink, 0, len(body), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
		if err := write([]byte(hdr)); err != nil {
			return err
		}
		if err := write(append([]byte(e.Name), 0)); err != nil {
			return err
		}
		if err := pad(); err != nil {
			return err
		}
		if err := write(body); err != nil {
			return err
		}
		return pad()
	}
	for i, e := range entries {
		if err := emit(i+1, e); err != nil {
			return err
		}
	}
	return emit(0, cpioEntry{Name: "TRAILER!!!"})
}
