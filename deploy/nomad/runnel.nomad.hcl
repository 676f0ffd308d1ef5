# One runnel per client node, under Nomad (a system job): each node's server runs that node's jobs; clients
# address nodes by their addresses (runnel has no cluster layer of its own). The raw_exec driver runs the static
# binary as root on the node, as the systemd unit would; the certificates are on each node in /etc/runnel.
job "runnel" {
  type = "system"

  group "runnel" {
    network {
      port "grpc" {
        static = 50051
      }
    }

    task "server" {
      driver = "raw_exec"

      artifact {
        # The static binary (`make static`), served from wherever the cluster fetches artifacts.
        source = "https://artifacts.example.com/runnel/0.1.0/runnel"
        mode   = "file"
        destination = "local/runnel"
      }

      config {
        command = "local/runnel"
        args    = ["server"]
      }

      env {
        RUNNEL_SERVER_LISTEN    = "${NOMAD_ADDR_grpc}"
        RUNNEL_SERVER_CERT      = "/etc/runnel/server.crt"
        RUNNEL_SERVER_KEY       = "/etc/runnel/server.key"
        RUNNEL_SERVER_CLIENT_CA = "/etc/runnel/ca.crt"
        RUNNEL_SERVER_STATE_DIR = "/var/lib/runnel"
        RUNNEL_SERVER_ADMIN     = "admin"
      }

      # SIGTERM, then what runnel needs to stop its jobs (--shutdown-grace, 5 s by default).
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"
    }
  }
}
