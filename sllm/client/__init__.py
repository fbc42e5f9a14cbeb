"""The command line's side: running a whole cluster on one machine (sllm up), starting and
owning the processes, calling the head's management API, and printing its status."""
