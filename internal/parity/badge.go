package parity

import (
	"fmt"
	"html"
	"strings"
)

// Badge draws a repository's parity badge: "arm64" on the left, the tier
// and arm64's pass rate on the right, coloured by the tier's rank (green
// for the best, amber between, grey for the last). t nil draws an
// "unknown" badge (an unknown repository, or one the viewer may not see:
// the two look the same).
func (p *Policy) Badge(t *RepoTier) []byte {
	right, color := "unknown", "#9f9f9f"
	if t != nil {
		right = t.Tier + " · " + pctOrNone(t.ARM64SuccessRate)
		switch r := p.Rank(t.Tier); {
		case r == 0:
			color = "#2e9e44"
		case r < len(p.Tiers)-1:
			color = "#d08b12"
		default:
			color = "#8a8a8a"
		}
	}
	return badge("arm64 parity", right, color)
}

// textWidth estimates a string's width in Verdana 11px, the badge font:
// about 7 px a character, narrow ones less.
func textWidth(s string) int {
	w := 0.0
	for _, r := range s {
		switch {
		case strings.ContainsRune("iljtf.,:;!|' ·", r):
			w += 3.8
		case r >= 'A' && r <= 'Z' || r == 'm' || r == 'w' || r == '%':
			w += 9
		default:
			w += 7
		}
	}
	return int(w + 0.5)
}

func badge(left, right, color string) []byte {
	lw, rw := textWidth(left)+12, textWidth(right)+12
	esc := html.EscapeString
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="20" role="img" aria-label="%s: %s">`, lw+rw, esc(left), esc(right))
	fmt.Fprintf(&b, `<title>%s: %s</title>`, esc(left), esc(right))
	fmt.Fprintf(&b, `<linearGradient id="s" x2="0" y2="100%%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>`)
	fmt.Fprintf(&b, `<clipPath id="r"><rect width="%d" height="20" rx="3" fill="#fff"/></clipPath>`, lw+rw)
	fmt.Fprintf(&b, `<g clip-path="url(#r)"><rect width="%d" height="20" fill="#555"/><rect x="%d" width="%d" height="20" fill="%s"/>`, lw, lw, rw, color)
	fmt.Fprintf(&b, `<rect width="%d" height="20" fill="url(#s)"/></g>`, lw+rw)
	fmt.Fprintf(&b, `<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">`)
	fmt.Fprintf(&b, `<text x="%d" y="14">%s</text><text x="%d" y="14">%s</text></g></svg>`, lw/2, esc(left), lw+rw/2, esc(right))
	return []byte(b.String())
}
