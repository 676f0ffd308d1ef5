//! [`Method`]: every RPC method the server serves, by its HTTP/2 path, with what the rest of the server needs to
//! know of each (its name in audit lines and metrics, whether it needs an identity, whether it streams
//! requests). The calls, the service and the metrics all name methods this way.

use crate::grpc::path;

/// Every method the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    StartJob,
    StopJob,
    GetJob,
    ListJobs,
    WaitJob,
    StreamOutput,
    RemoveJob,
    HealthCheck,
    HealthWatch,
    /// Server reflection, either version (see `server::reflection`).
    ReflectionV1,
    ReflectionV1Alpha,
}

impl Method {
    pub const ALL: [Method; 11] = [
        Method::StartJob,
        Method::StopJob,
        Method::GetJob,
        Method::ListJobs,
        Method::WaitJob,
        Method::StreamOutput,
        Method::RemoveJob,
        Method::HealthCheck,
        Method::HealthWatch,
        Method::ReflectionV1,
        Method::ReflectionV1Alpha,
    ];

    /// The method's name, as audit lines and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Method::StartJob => "StartJob",
            Method::StopJob => "StopJob",
            Method::GetJob => "GetJob",
            Method::ListJobs => "ListJobs",
            Method::WaitJob => "WaitJob",
            Method::StreamOutput => "StreamOutput",
            Method::RemoveJob => "RemoveJob",
            Method::HealthCheck => "HealthCheck",
            Method::HealthWatch => "HealthWatch",
            Method::ReflectionV1 => "ReflectionV1",
            Method::ReflectionV1Alpha => "ReflectionV1alpha",
        }
    }

    pub fn from_path(path: &str) -> Option<Method> {
        Some(match path {
            path::START_JOB => Method::StartJob,
            path::STOP_JOB => Method::StopJob,
            path::GET_JOB => Method::GetJob,
            path::LIST_JOBS => Method::ListJobs,
            path::WAIT_JOB => Method::WaitJob,
            path::STREAM_OUTPUT => Method::StreamOutput,
            path::REMOVE_JOB => Method::RemoveJob,
            path::HEALTH_CHECK => Method::HealthCheck,
            path::HEALTH_WATCH => Method::HealthWatch,
            path::REFLECTION_V1 => Method::ReflectionV1,
            path::REFLECTION_V1ALPHA => Method::ReflectionV1Alpha,
            _ => return None,
        })
    }

    /// Health needs a verified certificate (TLS checks that) but no job-owning identity, so probes work with any
    /// certificate the server trusts.
    pub fn needs_identity(self) -> bool {
        !matches!(self, Method::HealthCheck | Method::HealthWatch)
    }

    /// A stream of requests, each answered as it comes (reflection), rather than one request.
    pub fn streams_requests(self) -> bool {
        matches!(self, Method::ReflectionV1 | Method::ReflectionV1Alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::FileDescriptorSet;

    #[test]
    fn every_method_the_protos_declare_is_served_and_listed() {
        let set = FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut declared = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    declared.push(Method::from_path(&path).unwrap_or_else(|| panic!("{path} is not served")));
                }
            }
        }
        // Both reflection versions, every job method, both health methods: each once, and `ALL` is exactly them
        // (metrics count by `ALL`).
        assert_eq!(declared.len(), Method::ALL.len());
        for method in Method::ALL {
            assert!(declared.contains(&method), "{method:?} is in ALL but no proto declares it");
        }
        let names: std::collections::HashSet<_> = Method::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Method::ALL.len(), "method names are unique");
    }
}
