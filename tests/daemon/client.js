// A vmmd client made from protos/ by grpc-js + proto-loader (not Python): GetHostInfo, then
// Launch of the image given, printed as one JSON line. Usage: node client.js SOCKET IMAGE_ID
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [sock, imageId] = process.argv.slice(2);
const protos = path.join(__dirname, "..", "..", "protos");
const def = loader.loadSync(["vmmd/v1/host.proto", "vmmd/v1/microvms.proto"],
  { includeDirs: [protos], keepCase: true, longs: Number, enums: String, defaults: true });
const v1 = grpc.loadPackageDefinition(def).vmmd.v1;
const target = "unix:" + sock;
const host = new v1.HostService(target, grpc.credentials.createInsecure());
const vms = new v1.MicroVMService(target, grpc.credentials.createInsecure());

host.GetHostInfo({}, (err, info) => {
  if (err) { console.error(err.message); process.exit(2); }
  vms.Launch({ image_id: imageId, labels: { client: "grpc-js" } }, (err2, vm) => {
    if (err2) { console.error(err2.message); process.exit(3); }
    console.log(JSON.stringify({ arch: info.arch, capacity: info.capacity, vm }));
    process.exit(0);
  });
});
