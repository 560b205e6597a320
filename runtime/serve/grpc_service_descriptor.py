"""Triton's gRPC service descriptor (grpc_service.proto beside this file), serialized, in a descriptor pool of its own.

Generated; do not edit. After editing grpc_service.proto, regenerate it from runtime/serve/ with
    python -m grpc_tools.protoc -I. --descriptor_set_out=/tmp/ds.pb grpc_service.proto
and the FileDescriptorSet's file[0].SerializeToString(deterministic=True) (grpcio-tools 1.85.4, protobuf 7.36.2).
The message classes are built at run time from these bytes (protobuf's message_factory), so there is no
generated code pinned to one protobuf release, and a private pool keeps them apart from another copy of the
`inference` package in the same process (tritonclient's).
"""

SERIALIZED = (
    b'\n\x12grpc_service.proto\x12\tinference"\x13\n\x11ServerLiveRequest"(\n\x12Serv'
    b'erLiveResponse\x12\x12\n\x04live\x18\x01 \x01(\x08R\x04live"\x14\n\x12ServerReadyRequest"+\n\x13'
    b'ServerReadyResponse\x12\x14\n\x05ready\x18\x01 \x01(\x08R\x05ready"A\n\x11ModelReadyReque'
    b'st\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"*\n\x12ModelRea'
    b'dyResponse\x12\x14\n\x05ready\x18\x01 \x01(\x08R\x05ready"\x17\n\x15ServerMetadataRequest"f\n'
    b"\x16ServerMetadataResponse\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\t"
    b'R\x07version\x12\x1e\n\nextensions\x18\x03 \x03(\tR\nextensions"D\n\x14ModelMetadataRe'
    b'quest\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"\xcf\x02\n\x15Mode'
    b"lMetadataResponse\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08versions\x18\x02 \x03(\tR\x08ver"
    b"sions\x12\x1a\n\x08platform\x18\x03 \x01(\tR\x08platform\x12G\n\x06inputs\x18\x04 \x03(\x0b2/.inferenc"
    b"e.ModelMetadataResponse.TensorMetadataR\x06inputs\x12I\n\x07outputs\x18\x05 "
    b"\x03(\x0b2/.inference.ModelMetadataResponse.TensorMetadataR\x07output"
    b"s\x1aV\n\x0eTensorMetadata\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08d"
    b'atatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape"\xd7\x01\n\x0eInferParameter\x12\x1f\n\nbool_par'
    b"am\x18\x01 \x01(\x08H\x00R\tboolParam\x12!\n\x0bint64_param\x18\x02 \x01(\x03H\x00R\nint64Param\x12#\n\x0c"
    b"string_param\x18\x03 \x01(\tH\x00R\x0bstringParam\x12#\n\x0cdouble_param\x18\x04 \x01(\x01H\x00R\x0bd"
    b"oubleParam\x12#\n\x0cuint64_param\x18\x05 \x01(\x04H\x00R\x0buint64ParamB\x12\n\x10parameter"
    b'_choice"\xc3\x02\n\x13InferTensorContents\x12#\n\rbool_contents\x18\x01 \x03(\x08R\x0cbool'
    b"Contents\x12!\n\x0cint_contents\x18\x02 \x03(\x05R\x0bintContents\x12%\n\x0eint64_content"
    b"s\x18\x03 \x03(\x03R\rint64Contents\x12#\n\ruint_contents\x18\x04 \x03(\rR\x0cuintContents\x12"
    b"'\n\x0fuint64_contents\x18\x05 \x03(\x04R\x0euint64Contents\x12#\n\rfp32_contents\x18\x06 "
    b"\x03(\x02R\x0cfp32Contents\x12#\n\rfp64_contents\x18\x07 \x03(\x01R\x0cfp64Contents\x12%\n\x0eby"
    b'tes_contents\x18\x08 \x03(\x0cR\rbytesContents"\x9d\x08\n\x11ModelInferRequest\x12\x1d\n\nm'
    b"odel_name\x18\x01 \x01(\tR\tmodelName\x12#\n\rmodel_version\x18\x02 \x01(\tR\x0cmodelVers"
    b"ion\x12\x0e\n\x02id\x18\x03 \x01(\tR\x02id\x12L\n\nparameters\x18\x04 \x03(\x0b2,.inference.ModelInf"
    b"erRequest.ParametersEntryR\nparameters\x12E\n\x06inputs\x18\x05 \x03(\x0b2-.infe"
    b"rence.ModelInferRequest.InferInputTensorR\x06inputs\x12Q\n\x07outputs\x18"
    b"\x06 \x03(\x0b27.inference.ModelInferRequest.InferRequestedOutputTens"
    b"orR\x07outputs\x12,\n\x12raw_input_contents\x18\x07 \x03(\x0cR\x10rawInputContents\x1a\xcd\x02"
    b"\n\x10InferInputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08da"
    b"tatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12]\n\nparameters\x18\x04 \x03(\x0b2=.inference"
    b".ModelInferRequest.InferInputTensor.ParametersEntryR\nparamet"
    b"ers\x12:\n\x08contents\x18\x05 \x01(\x0b2\x1e.inference.InferTensorContentsR\x08conte"
    b"nts\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.in"
    b"ference.InferParameterR\x05value:\x028\x01\x1a\xf3\x01\n\x1aInferRequestedOutputTe"
    b"nsor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12g\n\nparameters\x18\x02 \x03(\x0b2G.inference.Mod"
    b"elInferRequest.InferRequestedOutputTensor.ParametersEntryR\np"
    b"arameters\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01("
    b"\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1aX\n\x0fParametersEntry\x12\x10"
    b"\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05"
    b'value:\x028\x01"\xdf\x05\n\x12ModelInferResponse\x12\x1d\n\nmodel_name\x18\x01 \x01(\tR\tmodelN'
    b"ame\x12#\n\rmodel_version\x18\x02 \x01(\tR\x0cmodelVersion\x12\x0e\n\x02id\x18\x03 \x01(\tR\x02id\x12M\n\n"
    b"parameters\x18\x04 \x03(\x0b2-.inference.ModelInferResponse.ParametersEn"
    b"tryR\nparameters\x12I\n\x07outputs\x18\x05 \x03(\x0b2/.inference.ModelInferRespo"
    b"nse.InferOutputTensorR\x07outputs\x12.\n\x13raw_output_contents\x18\x06 \x03(\x0cR"
    b"\x11rawOutputContents\x1a\xd0\x02\n\x11InferOutputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name"
    b"\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08datatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12_\n\nparame"
    b"ters\x18\x04 \x03(\x0b2?.inference.ModelInferResponse.InferOutputTensor."
    b"ParametersEntryR\nparameters\x12:\n\x08contents\x18\x05 \x01(\x0b2\x1e.inference.In"
    b"ferTensorContentsR\x08contents\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR"
    b"\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1aX\n"
    b"\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inferenc"
    b'e.InferParameterR\x05value:\x028\x01"F\n\x16ModelStatisticsRequest\x12\x12\n\x04nam'
    b'e\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"9\n\x11StatisticDuration'
    b'\x12\x14\n\x05count\x18\x01 \x01(\x04R\x05count\x12\x0e\n\x02ns\x18\x02 \x01(\x04R\x02ns"\xf2\x03\n\x0fInferStatistics\x126'
    b"\n\x07success\x18\x01 \x01(\x0b2\x1c.inference.StatisticDurationR\x07success\x120\n\x04fa"
    b"il\x18\x02 \x01(\x0b2\x1c.inference.StatisticDurationR\x04fail\x122\n\x05queue\x18\x03 \x01(\x0b2"
    b"\x1c.inference.StatisticDurationR\x05queue\x12A\n\rcompute_input\x18\x04 \x01(\x0b2"
    b"\x1c.inference.StatisticDurationR\x0ccomputeInput\x12A\n\rcompute_infer"
    b"\x18\x05 \x01(\x0b2\x1c.inference.StatisticDurationR\x0ccomputeInfer\x12C\n\x0ecomput"
    b"e_output\x18\x06 \x01(\x0b2\x1c.inference.StatisticDurationR\rcomputeOutput\x12"
    b"9\n\tcache_hit\x18\x07 \x01(\x0b2\x1c.inference.StatisticDurationR\x08cacheHit\x12;"
    b'\n\ncache_miss\x18\x08 \x01(\x0b2\x1c.inference.StatisticDurationR\tcacheMiss"'
    b"\x86\x03\n\x17InferResponseStatistics\x12A\n\rcompute_infer\x18\x01 \x01(\x0b2\x1c.inferen"
    b"ce.StatisticDurationR\x0ccomputeInfer\x12C\n\x0ecompute_output\x18\x02 \x01(\x0b2\x1c"
    b".inference.StatisticDurationR\rcomputeOutput\x126\n\x07success\x18\x03 \x01(\x0b"
    b"2\x1c.inference.StatisticDurationR\x07success\x120\n\x04fail\x18\x04 \x01(\x0b2\x1c.infe"
    b"rence.StatisticDurationR\x04fail\x12C\n\x0eempty_response\x18\x05 \x01(\x0b2\x1c.infe"
    b"rence.StatisticDurationR\remptyResponse\x124\n\x06cancel\x18\x06 \x01(\x0b2\x1c.inf"
    b'erence.StatisticDurationR\x06cancel"\x80\x02\n\x14InferBatchStatistics\x12\x1d\n'
    b"\nbatch_size\x18\x01 \x01(\x04R\tbatchSize\x12A\n\rcompute_input\x18\x02 \x01(\x0b2\x1c.infere"
    b"nce.StatisticDurationR\x0ccomputeInput\x12A\n\rcompute_infer\x18\x03 \x01(\x0b2\x1c"
    b".inference.StatisticDurationR\x0ccomputeInfer\x12C\n\x0ecompute_output"
    b'\x18\x04 \x01(\x0b2\x1c.inference.StatisticDurationR\rcomputeOutput"N\n\x0bMemor'
    b"yUsage\x12\x12\n\x04type\x18\x01 \x01(\tR\x04type\x12\x0e\n\x02id\x18\x02 \x01(\x03R\x02id\x12\x1b\n\tbyte_size\x18\x03 \x01("
    b'\x04R\x08byteSize"\xb6\x04\n\x0fModelStatistics\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07versi'
    b"on\x18\x02 \x01(\tR\x07version\x12%\n\x0elast_inference\x18\x03 \x01(\x04R\rlastInference\x12'\n\x0f"
    b"inference_count\x18\x04 \x01(\x04R\x0einferenceCount\x12'\n\x0fexecution_count\x18\x05 \x01"
    b"(\x04R\x0eexecutionCount\x12C\n\x0finference_stats\x18\x06 \x01(\x0b2\x1a.inference.Infe"
    b"rStatisticsR\x0einferenceStats\x12@\n\x0bbatch_stats\x18\x07 \x03(\x0b2\x1f.inference"
    b".InferBatchStatisticsR\nbatchStats\x129\n\x0cmemory_usage\x18\x08 \x03(\x0b2\x16.in"
    b"ference.MemoryUsageR\x0bmemoryUsage\x12T\n\x0eresponse_stats\x18\t \x03(\x0b2-.i"
    b"nference.ModelStatistics.ResponseStatsEntryR\rresponseStats\x1ad"
    b'\n\x12ResponseStatsEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x128\n\x05value\x18\x02 \x01(\x0b2".infe'
    b'rence.InferResponseStatisticsR\x05value:\x028\x01"V\n\x17ModelStatisticsR'
    b"esponse\x12;\n\x0bmodel_stats\x18\x01 \x03(\x0b2\x1a.inference.ModelStatisticsR\nmo"
    b'delStats"\xba\x01\n\x18ModelRepositoryParameter\x12\x1f\n\nbool_param\x18\x01 \x01(\x08H\x00R'
    b"\tboolParam\x12!\n\x0bint64_param\x18\x02 \x01(\x03H\x00R\nint64Param\x12#\n\x0cstring_para"
    b"m\x18\x03 \x01(\tH\x00R\x0bstringParam\x12!\n\x0bbytes_param\x18\x04 \x01(\x0cH\x00R\nbytesParamB\x12\n"
    b"\x10parameter_choice\"W\n\x16RepositoryIndexRequest\x12'\n\x0frepository_na"
    b'me\x18\x01 \x01(\tR\x0erepositoryName\x12\x14\n\x05ready\x18\x02 \x01(\x08R\x05ready"\xca\x01\n\x17Repositor'
    b"yIndexResponse\x12E\n\x06models\x18\x01 \x03(\x0b2-.inference.RepositoryIndexRe"
    b"sponse.ModelIndexR\x06models\x1ah\n\nModelIndex\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12"
    b"\x18\n\x07version\x18\x02 \x01(\tR\x07version\x12\x14\n\x05state\x18\x03 \x01(\tR\x05state\x12\x16\n\x06reason\x18\x04 "
    b"\x01(\tR\x06reason\"\x9f\x02\n\x1aRepositoryModelLoadRequest\x12'\n\x0frepository_nam"
    b"e\x18\x01 \x01(\tR\x0erepositoryName\x12\x1d\n\nmodel_name\x18\x02 \x01(\tR\tmodelName\x12U\n\npa"
    b"rameters\x18\x03 \x03(\x0b25.inference.RepositoryModelLoadRequest.Parame"
    b"tersEntryR\nparameters\x1ab\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x129"
    b"\n\x05value\x18\x02 \x01(\x0b2#.inference.ModelRepositoryParameterR\x05value:\x028"
    b'\x01"\x1d\n\x1bRepositoryModelLoadResponse"\xa3\x02\n\x1cRepositoryModelUnloadRe'
    b"quest\x12'\n\x0frepository_name\x18\x01 \x01(\tR\x0erepositoryName\x12\x1d\n\nmodel_name"
    b"\x18\x02 \x01(\tR\tmodelName\x12W\n\nparameters\x18\x03 \x03(\x0b27.inference.Repository"
    b"ModelUnloadRequest.ParametersEntryR\nparameters\x1ab\n\x0fParameters"
    b"Entry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x129\n\x05value\x18\x02 \x01(\x0b2#.inference.ModelRepo"
    b'sitoryParameterR\x05value:\x028\x01"\x1f\n\x1dRepositoryModelUnloadResponseb'
    b"\x06proto3"
)
