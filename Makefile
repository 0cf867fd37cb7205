# refci: CI in git refs. `make help` lists the targets.
GO        ?= go
BIN       := bin/refci
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
TESTFLAGS ?= -count=1 -timeout 12m

.PHONY: help build test bench lint gitea run serve demo clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

build: ## build bin/refci and, used when beside it, its light per-run shim, job client and push hook client (bin/refci-shim, refci-job, refci-hook), and bin/refci-forge (refci mirror, refci mail, a worker's [[forge]] and [mail])
	$(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/refci
	$(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)' -o $(dir $(BIN))refci-shim ./cmd/refci-shim
	$(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)' -o $(dir $(BIN))refci-job ./cmd/refci-job
	$(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)' -o $(dir $(BIN))refci-hook ./cmd/refci-hook
	$(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)' -o $(dir $(BIN))refci-forge ./cmd/refci-forge

test: ## run every test (real git, gpg and processes)
	$(GO) vet ./...
	$(GO) test $(TESTFLAGS) ./...

gitea: ## build (once, cached by version) the real Gitea the forge tests run; they skip without it
	./fixtures/gitea/build.sh

bench: build ## print the performance figures (refci beside its baselines)
	$(GO) run ./cmd/refci-bench -refci $(BIN)
	@echo "== forges: result to status on a real Gitea (make gitea first), API calls per run"
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkResultToGiteaStatus|BenchmarkAPICallsPerRun' -benchtime 15x ./cmd/refci/
	@echo "== mail: delivery to IMAPBox noticing it, and its idle CPU cost, on a real Dovecot (two minutes)"
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkIMAPWakeLatency' -benchtime 30x ./forge/mail/
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkIMAPIdleCost' -benchtime 1x ./forge/mail/
	@echo "== mail: delivery to reply with refci worker's [mail] (trivial pipeline), and refci mail's idle CPU beside an idle worker (a minute)"
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkMailDeliveryToReply' -benchtime 5x ./cmd/refci/
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkMailIdleCost' -benchtime 1x ./cmd/refci/

lint: ## gofmt, go vet and the import rules
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 -run TestImportRules .

SERVE_FLAGS ?=

serve: build ## the main job: run refci serve (git over SSH + a worker) on 127.0.0.1:2222; it prints what to do next
	PATH=$(CURDIR)/bin:$$PATH $(BIN) serve $(SERVE_FLAGS)

DEMO ?= $(CURDIR)/.demo

run: build ## a demo without SSH: a demo repository, a pipeline run, its status, log and verification
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@export REFCI_HOME=$(DEMO)/home PATH=$(CURDIR)/bin:$$PATH; set -e; \
	git init -q -b main $(DEMO)/app && cd $(DEMO)/app && \
	printf 'demo:\n\t@echo the tests pass\ntest: demo\n' > Makefile && \
	refci init >/dev/null && git add -A && \
	git -c user.name=demo -c user.email=demo@example.invalid commit -q -m 'demo app with a refci pipeline' && \
	echo '$$ refci run' && refci run && \
	echo && echo '$$ refci status' && refci status && \
	echo && echo '$$ refci verify' && refci verify && \
	echo && echo "demo repository: $(DEMO)/app (REFCI_HOME=$(DEMO)/home)"

clean: ## remove build output
	rm -rf bin
