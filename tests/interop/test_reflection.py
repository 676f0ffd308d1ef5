"""Server reflection, read by an independent client: grpcio-reflection's descriptor database (v1alpha, what
grpcurl-style tools use) builds the API from the server alone, and a job is started through it with no
generated stubs. The v1 service is driven raw with the same messages (the two versions share them).
"""

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

TIMEOUT = 10
SERVICES = {
    "runnel.v1.JobService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def test_descriptor_database_lists_services_and_describes_every_method(server):
    with server.channel("alice") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == SERVICES
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("runnel.v1.JobService")
        methods = {m.name: m for m in service.methods}
        assert set(methods) == {"StartJob", "StopJob", "GetJob", "ListJobs", "WaitJob", "StreamOutput", "RemoveJob"}
        assert methods["StreamOutput"].server_streaming and not methods["GetJob"].server_streaming
        assert methods["StartJob"].input_type.full_name == "runnel.v1.StartJobRequest"
        # Imports come along: the grace period is a google.protobuf.Duration.
        stop = pool.FindMessageTypeByName("runnel.v1.StopJobRequest")
        assert stop.fields_by_name["grace_period"].message_type.full_name == "google.protobuf.Duration"
        health = pool.FindServiceByName("grpc.health.v1.Health")
        assert {m.name for m in health.methods} == {"Check", "Watch"}


def test_a_job_started_from_reflected_types_alone(server):
    with server.channel("alice") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("runnel.v1.StartJobRequest"))
        job_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("runnel.v1.Job"))
        wait_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("runnel.v1.WaitJobRequest"))
        start = channel.unary_unary("/runnel.v1.JobService/StartJob", request_serializer=request_type.SerializeToString,
                                    response_deserializer=job_type.FromString)
        wait = channel.unary_unary("/runnel.v1.JobService/WaitJob", request_serializer=wait_type.SerializeToString,
                                   response_deserializer=job_type.FromString)
        job = start(request_type(command="sh", args=["-c", "exit 7"]), timeout=TIMEOUT)
        assert job.owner == "alice"
        ended = wait(wait_type(job_id=job.id), timeout=TIMEOUT)
        assert ended.exit_code == 7


def test_v1_answers_each_request_in_order_on_one_stream(server):
    Request = reflection_pb2.ServerReflectionRequest
    with server.channel("alice") as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=Request.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            Request(host="h", list_services=""),
            Request(file_containing_symbol="runnel.v1.JobService.StreamOutput"),
            Request(file_containing_symbol="runnel.v1.NoSuchThing"),
            Request(file_by_filename="grpc/health/v1/health.proto"),
            Request(all_extension_numbers_of_type="runnel.v1.Job"),
        ]
        responses = list(info(iter(requests), timeout=TIMEOUT))
    assert len(responses) == len(requests)
    for request, response in zip(requests, responses):
        assert response.original_request == request
    assert responses[0].valid_host == "h"
    assert {s.name for s in responses[0].list_services_response.service} == SERVICES
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in responses[1].file_descriptor_response.file_descriptor_proto]
    assert files[0].name == "runnel/v1/runnel.proto"
    assert {f.name for f in files[1:]} == {"google/protobuf/duration.proto", "google/protobuf/timestamp.proto"}
    assert responses[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "runnel.v1.NoSuchThing" in responses[2].error_response.error_message
    health = descriptor_pb2.FileDescriptorProto.FromString(
        responses[3].file_descriptor_response.file_descriptor_proto[0])
    assert health.package == "grpc.health.v1"
    assert responses[4].all_extension_numbers_response.base_type_name == "runnel.v1.Job"


def test_an_undecodable_reflection_request_ends_the_stream_as_any_undecodable_request(server):
    # INTERNAL, as the gRPC status codes document says for a request the server cannot parse (docs/wire.md).
    with server.channel("alice") as channel:
        info = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                     request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        try:
            list(info(iter([b"\xff\xff\xff"]), timeout=TIMEOUT))
            raise AssertionError("the stream ended OK")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INTERNAL, err
            assert "decode" in err.details()
