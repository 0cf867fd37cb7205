// Command refci-job is the light refci a pipeline finds on its PATH: it
// runs `refci job` and `refci secret` itself (package jobclient) and hands
// every other command to the full refci. A pipeline runs `refci job` once
// per job, and the full refci binary takes several milliseconds to start;
// this one holds the job client and little else, so that it starts in a
// fraction of that.
//
// A worker uses it when it lies beside the refci executable and is of the
// same build (worker.ChooseJobClient): the run's bin directory then holds
// a symbolic link to it as refci. For any other command it execs, with
// the same arguments, the refci beside its own file.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"refci.dev/refci/worker/jobsock/jobclient"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && (len(args) < 2 || !isHelp(args[1])) {
		switch args[0] {
		case "job":
			os.Exit(jobclient.RunJobCommand(context.Background(), args[1:], os.Getenv, os.Stdout, os.Stderr))
		case "secret":
			os.Exit(jobclient.RunSecretCommand(context.Background(), args[1:], os.Getenv, os.Stdout, os.Stderr))
		}
	}
	os.Exit(execFull(args))
}

// isHelp: `refci job -h` is the full refci's, so that help reads the same
// everywhere.
func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

// execFull replaces this process with the full refci beside it, or says
// why it cannot.
func execFull(args []string) int {
	self, err := os.Executable() // the file, symbolic links resolved
	if err != nil {
		fmt.Fprintf(os.Stderr, "refci: %v\n", err)
		return 3
	}
	full := filepath.Join(filepath.Dir(self), "refci")
	if a, err := os.Stat(self); err == nil {
		if b, err := os.Stat(full); err == nil && os.SameFile(a, b) {
			fmt.Fprintf(os.Stderr, "refci: %s is refci-job, which runs only `refci job` and `refci secret`, installed as refci; install the full refci there and refci-job beside it\n", full)
			return 3
		}
	}
	err = syscall.Exec(full, append([]string{"refci"}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "refci: this is refci-job, which runs only `refci job` and `refci secret`; for the other commands it runs the full refci beside it, %s, which it cannot: %v\n", full, err)
	return 3
}
