package main

// rootCommand is the table of every kmsfs command.
func rootCommand() *command {
	return &command{
		about: "kmsfs: an envelope-encrypting FUSE filesystem",
		subs: []*command{
			initCommand(),
			mountCommand(),
			umountCommand(),
			catCommand(),
			rewrapCommand(),
			gcCommand(),
			salvageCommand(),
			statsCommand(),
			benchCommand(),
			kmsCommand(),
		},
	}
}
