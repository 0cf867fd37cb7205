package worker

// Isolation says what a run's pipeline may see and write, through its
// shim (RunSpec.Shim; see proc.Spec.Hide). The zero value hides nothing
// and leaves the file system as it is.
type Isolation struct {
	// Hide lists absolute paths the pipeline must not see (the worker's
	// key, configuration, caches, the other runs).
	Hide []string
	// RequireIsolation refuses to run a pipeline from which Hide cannot
	// be hidden (no user namespaces): the run ends in state error.
	RequireIsolation bool
	// With Hide, the pipeline's whole file system is read-only but for
	// its run directory, shim.ScratchDirs and Writable; ReadOnly lists
	// paths under those that stay read-only (see proc.Spec.ReadOnly).
	Writable, ReadOnly []string
}
