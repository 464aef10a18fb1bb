package image

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"
	"strings"
)

// modDepends reads the depends= field of a kernel module's .modinfo section.
func modDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	return parseModinfoDepends(b), nil
}

func parseModinfoDepends(modinfo []byte) []string {
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps
		}
	}
	return nil
}

// modName normalises a module name as the kernel does (- and _ are one).
func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleLoadOrder returns want and everything it depends on, dependencies
// first, skipping built-ins. deps maps a module to its dependencies; a module
// neither in deps nor built in is an error.
func moduleLoadOrder(want []string, deps map[string][]string, builtin map[string]bool) ([]string, error) {
	var order []string
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(m string, chain []string) error
	visit = func(m string, chain []string) error {
		if builtin[m] {
			return nil
		}
		switch state[m] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, m), " → "))
		case 2:
			return nil
		}
		d, ok := deps[m]
		if !ok {
			return fmt.Errorf("module %s: not in the kernel package (and not built in)", m)
		}
		state[m] = 1
		sorted := append([]string(nil), d...)
		sort.Strings(sorted)
		for _, x := range sorted {
			if err := visit(x, append(chain, m)); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range want {
		if err := visit(modName(m), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
