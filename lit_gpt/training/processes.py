"""What a training process knows about the processes around it: the launcher's environment variables."""

# Set by torchrun / `fabric run` / Fabric for each rank; a child that must run as a single process drops them.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
