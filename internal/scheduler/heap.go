package scheduler

// A tiny binary min-heap over slices, ordered by a less function. The fair-share
// loop only ever changes the key of the top element, and only upwards (more VMs,
// or a younger oldest job), so heapFixTop sifts down.

func heapPush[T any](h *[]T, x T, less func(a, b T) bool) {
	*h = append(*h, x)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !less(s[i], s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func heapPop[T any](h *[]T, less func(a, b T) bool) {
	s := *h
	n := len(s) - 1
	s[0] = s[n]
	var zero T
	s[n] = zero
	*h = s[:n]
	if n > 0 {
		heapFixTop(*h, less)
	}
}

func heapFixTop[T any](s []T, less func(a, b T) bool) {
	i := 0
	for {
		l := 2*i + 1
		if l >= len(s) {
			return
		}
		m := l
		if r := l + 1; r < len(s) && less(s[r], s[l]) {
			m = r
		}
		if !less(s[m], s[i]) {
			return
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
}
