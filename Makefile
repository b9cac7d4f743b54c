# kmsfs: the README's two commands are `make mount` and `make test`.
VAULT ?= $(HOME)/kmsfs/vault
MNT   ?= $(HOME)/kmsfs/plain
BIN   ?= bin/kmsfs

.PHONY: build mount umount test deps deps-mount bench install

build:
	go build -o $(BIN) ./cmd/kmsfs

# Everything the tests and benchmarks use (make test runs it).
deps:
	scripts/deps.sh

# Only what mounting needs: FUSE 3.
deps-mount:
	scripts/deps-mount.sh

# First run on a fresh machine: install FUSE 3 if missing (nothing else),
# build, create a volume on the embedded KMS (once), and mount it.
mount: build
	@scripts/deps-mount.sh
	@mkdir -p $(MNT)
	@[ -f $(VAULT)/.kmsfs/volume.json ] || $(BIN) init $(VAULT)
	$(BIN) mount $(VAULT) $(MNT)
	@echo "mounted: plaintext view at $(MNT), ciphertext in $(VAULT); unmount with: $(BIN) umount $(MNT)"

umount:
	$(BIN) umount $(MNT)

test:
	scripts/test.sh

bench: build
	bench/compare.sh

# Installs kmsfs where mount(8) finds it (its PATH is fixed), so that
# `mount -t fuse.kmsfs` and /etc/fstab entries work through mount.fuse3.
install: build
	install -m 0755 $(BIN) /usr/local/bin/kmsfs
