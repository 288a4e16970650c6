/**
 * A minimal ONNX writer: just enough of onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto,
 * ValueInfoProto, AttributeProto) to build the one-node graphs the onnxruntime peers run. Protobuf
 * wire format by hand: varint tags and lengths, length-delimited submessages, fixed32 floats.
 * see: https://github.com/onnx/onnx/blob/main/onnx/onnx.proto (field numbers below)
 */

const ELEM_FLOAT = 1; // TensorProto.DataType.FLOAT

function varint(n: number): number[] {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

/** One protobuf message under construction: fields appended in order. */
class Msg {
  readonly parts: Uint8Array[] = [];
  int(field: number, n: number): this {
    this.parts.push(Uint8Array.from([...varint(field << 3), ...varint(n)]));
    return this;
  }
  bytes(field: number, data: Uint8Array): this {
    this.parts.push(Uint8Array.from([...varint((field << 3) | 2), ...varint(data.length)]), data);
    return this;
  }
  str(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  msg(field: number, m: Msg): this {
    return this.bytes(field, m.encode());
  }
  float(field: number, x: number): this {
    const b = new Uint8Array(5);
    b[0] = (field << 3) | 5;
    new DataView(b.buffer).setFloat32(1, x, true);
    this.parts.push(b);
    return this;
  }
  encode(): Uint8Array {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

export interface OnnxNode {
  op: 'MatMul' | 'Gemm' | 'Add' | 'Mul';
  inputs: string[];
  output: string;
  /** Gemm's alpha, beta (floats) and transA, transB (ints). */
  attrs?: { alpha?: number; beta?: number; transA?: number; transB?: number };
}

export interface OnnxGraph {
  /** Graph inputs (fed per run), f32 with these shapes. */
  inputs: { name: string; shape: number[] }[];
  /** Constant f32 tensors stored in the model (weights a runtime may prepack). */
  initializers?: { name: string; shape: number[]; data: Float32Array }[];
  nodes: OnnxNode[];
  output: { name: string; shape: number[] };
}

const valueInfo = (name: string, shape: number[]): Msg => {
  const dims = new Msg();
  for (const d of shape) dims.msg(1, new Msg().int(1, d)); // TensorShapeProto.dim { dim_value }
  const tensorType = new Msg().int(1, ELEM_FLOAT).msg(2, dims); // TypeProto.Tensor { elem_type, shape }
  return new Msg().str(1, name).msg(2, new Msg().msg(1, tensorType)); // ValueInfoProto { name, type { tensor_type } }
};

/** Serialises a graph of f32 tensors as an ONNX model (IR version 8, default opset 17). */
export function onnxModel(g: OnnxGraph): Uint8Array {
  const graph = new Msg();
  g.nodes.forEach((n, i) => {
    const node = new Msg();
    for (const x of n.inputs) node.str(1, x);
    node.str(2, n.output).str(3, `${n.op.toLowerCase()}${i}`).str(4, n.op);
    for (const [key, v] of Object.entries(n.attrs ?? {})) {
      // AttributeProto { name = 1, f = 2, i = 3, type = 20 (FLOAT 1, INT 2) }
      const isInt = key.startsWith('trans');
      const a = new Msg().str(1, key);
      if (isInt) a.int(3, v).int(20, 2);
      else a.float(2, v).int(20, 1);
      node.msg(5, a);
    }
    graph.msg(1, node);
  });
  graph.str(2, 'peer');
  for (const t of g.initializers ?? []) {
    // TensorProto { dims = 1, data_type = 2, name = 8, raw_data = 9 (little-endian) }
    const tensor = new Msg();
    for (const d of t.shape) tensor.int(1, d);
    tensor.int(2, ELEM_FLOAT).str(8, t.name).bytes(9, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    graph.msg(5, tensor);
  }
  for (const x of g.inputs) graph.msg(11, valueInfo(x.name, x.shape));
  graph.msg(12, valueInfo(g.output.name, g.output.shape));
  // ModelProto { ir_version = 1, producer_name = 2, graph = 7, opset_import = 8 { domain = 1, version = 2 } }
  return new Msg().int(1, 8).str(2, 'lora-wasm bench').msg(7, graph).msg(8, new Msg().str(1, '').int(2, 17)).encode();
}
