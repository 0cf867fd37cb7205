package server

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Banner is what `refci serve` prints on start (see Server.Banner).
// Concurrency 0 says there is no embedded worker; HTTP "" that there is
// no site.
type Banner struct {
	Data, Roles, Addr, HostKey, HostFP, Signer, HTTP string
	Admins                                           []string
	Repos                                            []string
	Concurrency                                      int
}

// WriteBanner prints where the data is, which admins were taken, and the
// commands to use.
func WriteBanner(w io.Writer, b Banner) {
	host, port, _ := net.SplitHostPort(b.Addr)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "HOST" // listening everywhere: the user knows the name
	}
	base := "ssh://" + net.JoinHostPort(host, port)
	if strings.Contains(host, ":") {
		base = "ssh://[" + host + "]:" + port
	}
	fmt.Fprintf(w, "refci serve: listening on %s\n", base)
	fmt.Fprintf(w, "  data:      %s\n", b.Data)
	fmt.Fprintf(w, "  roles:     %s (edit it to add keys; it is re-read on change)\n", b.Roles)
	for _, a := range b.Admins {
		fmt.Fprintf(w, "  admin:     %s\n", a)
	}
	fmt.Fprintf(w, "  host key:  %s\n", b.HostFP)
	if b.Concurrency > 0 {
		fmt.Fprintf(w, "  results signed by %s; embedded worker runs %d at once\n", b.Signer, b.Concurrency)
	} else {
		fmt.Fprintf(w, "  no embedded worker (--no-worker): requests wait for workers elsewhere\n")
	}
	if len(b.Repos) > 0 {
		fmt.Fprintf(w, "  repositories: %s\n", strings.Join(b.Repos, " "))
	}
	if b.HTTP != "" {
		fmt.Fprintf(w, "  viewer:    %s\n", b.HTTP)
	}
	repo := "app.git"
	if len(b.Repos) > 0 {
		repo = b.Repos[0]
	}
	fmt.Fprintf(w, "\nUse it (an admin's first push of a branch creates the repository):\n")
	fmt.Fprintf(w, "  refci init && git add .refci/run && git commit -m 'Add refci pipeline'   # once, in your repository\n")
	fmt.Fprintf(w, "  git remote add ci %s/%s\n", base, repo)
	fmt.Fprintf(w, "  git push ci HEAD                              # your current branch, whatever its name\n")
	fmt.Fprintf(w, "  git push ci HEAD:refs/ci/requests/NAME        # runs at once; -o env=E -o timeout=20m for options\n")
	fmt.Fprintf(w, "  refci fetch --remote ci && refci status       # the runs of HEAD, however many others there are\n")
	fmt.Fprintf(w, "Other workers (give their key the worker role):\n")
	fmt.Fprintf(w, "  refci worker --remote %s/%s\n", base, repo)
	fmt.Fprintf(w, "Clients check the host key with this known_hosts line:\n")
	knownHost := host
	if port != "22" {
		knownHost = "[" + host + "]:" + port
	}
	fmt.Fprintf(w, "  %s %s\n\n", knownHost, b.HostKey)
}

// ParseSize reads a byte count written as 1000, 512K, 100M or 1G (as
// --max-pack takes it).
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size; write e.g. 500M or 2G", s)
	}
	return n * mult, nil
}
