//! Server reflection (`grpc.reflection.v1` and `v1alpha`): the server describes its own services, so stock
//! tools (grpcurl, evans, Postman, grpcui) can call it without the `.proto` files.
//!
//! Both versions are one bidirectional stream of the same messages: each request names a file, a symbol or
//! asks for the list of services, and gets one response. The answers come from the descriptors `build.rs`
//! compiled from `proto/` ([`crate::proto::FILE_DESCRIPTOR_SET`]), indexed once into a [`Catalog`]: a file is
//! sent with everything it imports, as the protocol asks. Something not found is an `ErrorResponse` in the
//! stream, which goes on; a request that does not decode ends the call.
//!
//! The call reads a request only once the previous answer is within HTTP/2 flow control (see
//! `Call::poll`), so a client that sends requests without reading answers stops being read: what a stream
//! holds is bounded by h2's send buffer, and a stream counts among its identity's `--max-followers-per-client`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

use super::wire::CallError;
use crate::grpc::{encode_message, Code};
use crate::proto::reflection::server_reflection_request::MessageRequest;
use crate::proto::reflection::server_reflection_response::MessageResponse;
use crate::proto::reflection::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};

/// The server's files, indexed for reflection's questions.
#[derive(Debug, Default)]
struct Catalog {
    /// Each file's encoded `FileDescriptorProto` and the files it imports (indexes into `files`).
    files: Vec<(Bytes, Vec<usize>)>,
    by_name: HashMap<String, usize>,
    /// Every fully qualified symbol a file declares (services, methods, messages, fields, enums, enum values),
    /// and that file.
    symbols: HashMap<String, usize>,
    /// Message types, for `all_extension_numbers_of_type` (none has extensions).
    messages: HashSet<String>,
    services: Vec<String>,
}

impl Catalog {
    fn build(set: FileDescriptorSet) -> Catalog {
        let mut catalog = Catalog::default();
        for (index, file) in set.file.iter().enumerate() {
            catalog.by_name.insert(file.name().to_string(), index);
        }
        for (index, file) in set.file.iter().enumerate() {
            let imports = file.dependency.iter().filter_map(|name| catalog.by_name.get(name).copied()).collect();
            catalog.files.push((Bytes::from(file.encode_to_vec()), imports));
            catalog.index_symbols(file, index);
        }
        catalog
    }

    fn index_symbols(&mut self, file: &FileDescriptorProto, index: usize) {
        let package = file.package();
        let scoped = |name: &str| if package.is_empty() { name.to_string() } else { format!("{package}.{name}") };
        for service in &file.service {
            let name = scoped(service.name());
            for method in &service.method {
                self.symbols.insert(format!("{name}.{}", method.name()), index);
            }
            self.symbols.insert(name.clone(), index);
            self.services.push(name);
        }
        for message in &file.message_type {
            self.index_message(&scoped(message.name()), message, index);
        }
        for enumeration in &file.enum_type {
            self.index_enum(package, enumeration, index);
        }
    }

    fn index_message(&mut self, name: &str, message: &DescriptorProto, index: usize) {
        for field in &message.field {
            self.symbols.insert(format!("{name}.{}", field.name()), index);
        }
        for nested in &message.nested_type {
            self.index_message(&format!("{name}.{}", nested.name()), nested, index);
        }
        for enumeration in &message.enum_type {
            self.index_enum(name, enumeration, index);
        }
        self.symbols.insert(name.to_string(), index);
        self.messages.insert(name.to_string());
    }

    /// An enum is named in `scope`, and so are its values (protobuf's C++ scoping rule).
    fn index_enum(&mut self, scope: &str, enumeration: &EnumDescriptorProto, index: usize) {
        let scoped = |name: &str| if scope.is_empty() { name.to_string() } else { format!("{scope}.{name}") };
        for value in &enumeration.value {
            self.symbols.insert(scoped(value.name()), index);
        }
        self.symbols.insert(scoped(enumeration.name()), index);
    }

    /// File `index` and everything it imports, directly or not, the file itself first.
    fn with_imports(&self, index: usize) -> Vec<Bytes> {
        let mut order = vec![index];
        let mut seen: HashSet<usize> = order.iter().copied().collect();
        let mut next = 0;
        while let Some(&file) = order.get(next) {
            next += 1;
            for &import in self.files.get(file).map(|(_, imports)| imports.as_slice()).unwrap_or_default() {
                if seen.insert(import) {
                    order.push(import);
                }
            }
        }
        order.iter().filter_map(|&file| self.files.get(file).map(|(encoded, _)| encoded.clone())).collect()
    }
}

/// The catalog, built on the first reflection request: the descriptors are part of the binary and never change.
fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| match FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) {
        Ok(set) => Catalog::build(set),
        Err(err) => {
            // build.rs wrote these bytes with the same prost: this cannot happen short of a broken build.
            log::error!("the built-in descriptors do not decode: {err}; reflection answers NOT_FOUND");
            Catalog::default()
        }
    })
}

/// The response message (gRPC-framed) to one reflection request.
pub fn answer(request: &Bytes) -> Result<Bytes, CallError> {
    let request = ServerReflectionRequest::decode(request.clone()).map_err(CallError::Undecodable)?;
    let catalog = catalog();
    let not_found = |what: &str, name: &str| {
        MessageResponse::ErrorResponse(ErrorResponse {
            error_code: Code::NotFound as i32,
            error_message: format!("{what} {:?} not found", crate::jobs::clip(name)),
        })
    };
    let files = |index: usize| {
        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: catalog.with_imports(index).into_iter().map(Vec::from).collect(),
        })
    };
    let response = match &request.message_request {
        Some(MessageRequest::ListServices(_)) => MessageResponse::ListServicesResponse(ListServiceResponse {
            service: catalog.services.iter().map(|name| ServiceResponse { name: name.clone() }).collect(),
        }),
        Some(MessageRequest::FileByFilename(name)) => match catalog.by_name.get(name) {
            Some(&index) => files(index),
            None => not_found("file", name),
        },
        Some(MessageRequest::FileContainingSymbol(symbol)) => {
            match catalog.symbols.get(symbol.strip_prefix('.').unwrap_or(symbol)) {
                Some(&index) => files(index),
                None => not_found("symbol", symbol),
            }
        }
        Some(MessageRequest::FileContainingExtension(extension)) => {
            not_found("extension of", &format!("{} number {}", extension.containing_type, extension.extension_number))
        }
        Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
            if catalog.messages.contains(name.strip_prefix('.').unwrap_or(name)) {
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: name.clone(),
                    extension_number: Vec::new(),
                })
            } else {
                not_found("message type", name)
            }
        }
        None => MessageResponse::ErrorResponse(ErrorResponse {
            error_code: Code::InvalidArgument as i32,
            error_message: "the request asks for nothing (message_request is not set)".into(),
        }),
    };
    Ok(encode_message(&ServerReflectionResponse {
        valid_host: request.host.clone(),
        original_request: Some(request),
        message_response: Some(response),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::MessageDecoder;

    /// Asks one question and checks the answer echoes it.
    fn ask(request: MessageRequest) -> MessageResponse {
        let request = ServerReflectionRequest { host: "h".into(), message_request: Some(request) };
        let framed = answer(&Bytes::from(request.encode_to_vec())).unwrap();
        let mut decoder = MessageDecoder::new(1 << 20);
        decoder.push(framed);
        let response = ServerReflectionResponse::decode(decoder.next_message().unwrap().unwrap()).unwrap();
        assert_eq!(response.valid_host, "h");
        assert_eq!(response.original_request.as_ref(), Some(&request));
        response.message_response.unwrap()
    }

    fn file_names(response: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = response else { panic!("not files: {response:?}") };
        files
            .file_descriptor_proto
            .iter()
            .map(|bytes| FileDescriptorProto::decode(&bytes[..]).unwrap().name().to_string())
            .collect()
    }

    #[test]
    fn lists_every_service_served() {
        let MessageResponse::ListServicesResponse(list) = ask(MessageRequest::ListServices(String::new())) else {
            panic!("not a service list")
        };
        let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "runnel.v1.JobService"
            ]
        );
    }

    #[test]
    fn a_symbol_gives_its_file_first_then_everything_it_imports() {
        for symbol in [
            "runnel.v1.JobService",
            ".runnel.v1.JobService.StartJob",
            "runnel.v1.Job",
            "runnel.v1.OUTPUT_STREAM_STDERR",
        ] {
            let names = file_names(ask(MessageRequest::FileContainingSymbol(symbol.into())));
            assert_eq!(names.first().map(String::as_str), Some("runnel/v1/runnel.proto"), "{symbol}");
            let imports: HashSet<_> = names[1..].iter().map(String::as_str).collect();
            assert_eq!(imports, HashSet::from(["google/protobuf/duration.proto", "google/protobuf/timestamp.proto"]));
        }
        let names = file_names(ask(MessageRequest::FileByFilename("grpc/health/v1/health.proto".into())));
        assert_eq!(names, ["grpc/health/v1/health.proto"]);
    }

    #[test]
    fn what_is_not_there_is_an_error_in_the_stream() {
        for request in [
            MessageRequest::FileContainingSymbol("runnel.v1.Nope".into()),
            MessageRequest::FileByFilename("x".repeat(10_000)),
            MessageRequest::AllExtensionNumbersOfType("runnel.v1.Nope".into()),
        ] {
            let MessageResponse::ErrorResponse(error) = ask(request) else { panic!("not an error") };
            assert_eq!(error.error_code, Code::NotFound as i32);
            assert!(error.error_message.len() < 400, "client input is clipped: {}", error.error_message.len());
        }
        let MessageResponse::AllExtensionNumbersResponse(numbers) =
            ask(MessageRequest::AllExtensionNumbersOfType("runnel.v1.Job".into()))
        else {
            panic!("not extension numbers")
        };
        assert!(numbers.extension_number.is_empty());
        assert!(matches!(answer(&Bytes::from_static(b"\xff\xff")), Err(CallError::Undecodable(_))));
    }
}
