// The official @mistralai/mistralai npm SDK (pinned in package.json), unchanged, against
// `bora serve` on the built-in v3 demo model (its tokenizer has the tool-call tokens): the
// examples of the Node.js guide the project follows, as tests. BORA_BIN names the binary
// (default: target/release/bora). Run by tests/run with node's own test runner.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { Mistral } from "@mistralai/mistralai";
import { MistralError, HTTPValidationError } from "@mistralai/mistralai/models/errors";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.BORA_BIN || path.join(ROOT, "target", "release", "bora");
const MODEL = "bora-demo-v3";
const HELLO = [{ role: "user", content: "Hello, who are you?" }];

let server;
let url;

/** Starts `bora serve` on a free port and waits for the model; resolves to its URL. */
function startServer(...extra) {
  const proc = spawn(BIN, ["serve", "--model", MODEL, "--port", "0", ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bora serve did not start:\n${lines.join("\n")}`)), 120_000);
    const onLine = (line) => {
      lines.push(line);
      const m = line.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1], lines });
      }
    };
    createInterface({ input: proc.stdout }).on("line", onLine);
    createInterface({ input: proc.stderr }).on("line", onLine);
    proc.on("exit", (code) => reject(new Error(`bora serve exited (${code}):\n${lines.join("\n")}`)));
  });
}

async function waitHealthy(base) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      const r = await fetch(`${base}/health`);
      if (r.status === 200) return;
    } catch {
      // not listening yet
    }
    assert.ok(Date.now() < deadline, "bora serve never became healthy");
    await new Promise((r) => setTimeout(r, 50));
  }
}

function client(apiKey = "anything") {
  // The server root, as the SDK takes it (no /v1).
  return new Mistral({ apiKey, serverURL: url });
}

before(async () => {
  server = await startServer();
  url = server.url;
  await waitHealthy(url);
});

after(async () => {
  const exited = new Promise((r) => server.proc.on("exit", (code) => r(code)));
  server.proc.kill("SIGTERM");
  assert.equal(await exited, 0, "bora serve did not shut down cleanly");
});

test("chat.complete: an answer in the cloud's shape", async () => {
  const res = await client().chat.complete({
    model: MODEL,
    messages: HELLO,
    maxTokens: 8,
    temperature: 0,
    randomSeed: 1,
  });
  const choice = res.choices[0];
  assert.equal(choice.message.role, "assistant");
  assert.equal(typeof choice.message.content, "string");
  assert.ok(choice.message.content.length > 0);
  assert.equal(choice.finishReason, "length");
  assert.equal(res.usage.completionTokens, 8);
  assert.equal(res.usage.totalTokens, res.usage.promptTokens + res.usage.completionTokens);
  assert.equal(res.model, MODEL);
});

test("chat.stream at temperature 0 equals chat.complete", async () => {
  const c = client();
  const args = { model: MODEL, messages: HELLO, maxTokens: 16, temperature: 0, randomSeed: 7 };
  const whole = await c.chat.complete(args);
  const stream = await c.chat.stream(args);
  let text = "";
  const reasons = [];
  let usage;
  for await (const event of stream) {
    const choice = event.data.choices[0];
    if (choice) {
      if (typeof choice.delta.content === "string") text += choice.delta.content;
      reasons.push(choice.finishReason ?? null);
    }
    usage = event.data.usage ?? usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(reasons.at(-1), whole.choices[0].finishReason);
  assert.ok(reasons.slice(0, -1).every((r) => r === null));
  assert.equal(usage.totalTokens, whole.usage.totalTokens);
});

/** The guide's agent: keeps the conversation and sends all of it each turn. */
class Agent {
  constructor(mistral, system) {
    this.mistral = mistral;
    this.history = [{ role: "system", content: system }];
  }

  async ask(text) {
    this.history.push({ role: "user", content: text });
    const res = await this.mistral.chat.complete({
      model: MODEL,
      messages: this.history,
      maxTokens: 6,
      temperature: 0,
    });
    const message = res.choices[0].message;
    this.history.push({ role: "assistant", content: message.content });
    return res;
  }
}

test("an agent class keeps its history over three turns", async () => {
  const agent = new Agent(client(), "You are a terse assistant.");
  const prompts = [];
  for (const q of ["First question?", "Second question?", "Third question?"]) {
    const res = await agent.ask(q);
    prompts.push(res.usage.promptTokens);
  }
  assert.equal(agent.history.length, 7);
  // Each turn's prompt holds the whole history before it.
  assert.ok(prompts[0] < prompts[1] && prompts[1] < prompts[2], `${prompts}`);
  // The third turn, sent alone with the same history, gives the same answer.
  const again = await client().chat.complete({
    model: MODEL,
    messages: agent.history.slice(0, 6),
    maxTokens: 6,
    temperature: 0,
  });
  assert.equal(again.choices[0].message.content, agent.history[6].content);
});

test("JSON mode and a JSON schema give JSON", async () => {
  const c = client();
  const mode = await c.chat.complete({
    model: MODEL,
    messages: [{ role: "user", content: "Answer in JSON." }],
    responseFormat: { type: "json_object" },
    maxTokens: 64,
    temperature: 0,
  });
  assert.equal(mode.choices[0].finishReason, "stop");
  const obj = JSON.parse(mode.choices[0].message.content);
  assert.equal(typeof obj, "object");
  assert.ok(obj !== null && !Array.isArray(obj));

  const schema = {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 12 },
      genre: { enum: ["fiction", "poetry", "history"] },
      pages: { type: "integer", minimum: 1, maximum: 999 },
    },
    required: ["name", "genre", "pages"],
    additionalProperties: false,
  };
  const res = await c.chat.complete({
    model: MODEL,
    messages: [{ role: "user", content: "Describe a book." }],
    responseFormat: {
      type: "json_schema",
      jsonSchema: { name: "book", schemaDefinition: schema, strict: true },
    },
    maxTokens: 64,
    temperature: 0,
  });
  assert.equal(res.choices[0].finishReason, "stop");
  const book = JSON.parse(res.choices[0].message.content);
  assert.deepEqual(Object.keys(book).sort(), ["genre", "name", "pages"]);
  assert.equal(typeof book.name, "string");
  assert.ok(book.name.length <= 12);
  assert.ok(["fiction", "poetry", "history"].includes(book.genre));
  assert.ok(Number.isInteger(book.pages) && book.pages >= 1 && book.pages <= 999);
});

const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: {
      type: "object",
      properties: { city: { enum: ["Paris", "Lyon", "Nice"] } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};

test("a forced tool call, then the tool's result turn", async () => {
  const c = client();
  const messages = [{ role: "user", content: "What is the weather in Paris?" }];
  const res = await c.chat.complete({
    model: MODEL,
    messages,
    tools: [WEATHER],
    toolChoice: "any",
    parallelToolCalls: false,
    maxTokens: 64,
    temperature: 0,
  });
  const choice = res.choices[0];
  assert.equal(choice.finishReason, "tool_calls");
  assert.equal(choice.message.toolCalls.length, 1);
  const call = choice.message.toolCalls[0];
  assert.equal(call.function.name, "get_weather");
  const args = typeof call.function.arguments === "string" ? JSON.parse(call.function.arguments) : call.function.arguments;
  assert.ok(["Paris", "Lyon", "Nice"].includes(args.city), JSON.stringify(args));
  assert.ok(typeof call.id === "string" && call.id.length > 0);

  // The tool's result goes back as a `tool` message naming the call; the answer is text.
  messages.push(choice.message);
  messages.push({ role: "tool", name: "get_weather", toolCallId: call.id, content: '{"sky": "clear"}' });
  const next = await c.chat.complete({
    model: MODEL,
    messages,
    tools: [WEATHER],
    toolChoice: "none",
    maxTokens: 8,
    temperature: 0,
  });
  assert.equal(next.choices[0].finishReason, "length");
  assert.ok(!next.choices[0].message.toolCalls || next.choices[0].message.toolCalls.length === 0);
  // The result turn was rendered into the prompt.
  assert.ok(next.usage.promptTokens > res.usage.promptTokens);

  // A named tool choice.
  const named = await c.chat.complete({
    model: MODEL,
    messages: [{ role: "user", content: "Weather?" }],
    tools: [WEATHER],
    toolChoice: { type: "function", function: { name: "get_weather" } },
    maxTokens: 64,
    temperature: 0,
  });
  assert.equal(named.choices[0].message.toolCalls[0].function.name, "get_weather");
});

test("models.list names the served model", async () => {
  const list = await client().models.list();
  assert.deepEqual(
    list.data.map((m) => m.id),
    [MODEL],
  );
  assert.equal(list.data[0].object, "model");
});

test("errors arrive as the SDK's errors, with their status", async () => {
  const c = client();
  await assert.rejects(
    c.chat.complete({ model: "no-such-model", messages: HELLO, maxTokens: 2 }),
    (e) => e instanceof MistralError && e.statusCode === 400 && /no-such-model/.test(e.body),
  );
  await assert.rejects(
    c.chat.complete({ model: MODEL, messages: HELLO, maxTokens: 2, temperature: -1 }),
    (e) =>
      e instanceof HTTPValidationError &&
      e.statusCode === 422 &&
      JSON.stringify(e.detail[0].loc) === JSON.stringify(["body", "temperature"]),
  );
  await assert.rejects(
    c.models.retrieve({ modelId: "nope" }),
    (e) => e instanceof MistralError && e.statusCode === 404,
  );
  await assert.rejects(
    c.chat.complete({ model: MODEL, messages: [{ role: "user", content: "x ".repeat(200_000) }], maxTokens: 2 }),
    (e) => e instanceof MistralError && e.statusCode === 400 && /context/.test(e.body),
  );
});

test("a server behind a key answers 401 to the wrong one", async () => {
  const keyed = await startServer("--api-key", "s3cret");
  try {
    await waitHealthy(keyed.url);
    const wrong = new Mistral({ apiKey: "wrong", serverURL: keyed.url });
    await assert.rejects(
      wrong.chat.complete({ model: MODEL, messages: HELLO, maxTokens: 2 }),
      (e) => e instanceof MistralError && e.statusCode === 401,
    );
    const right = new Mistral({ apiKey: "s3cret", serverURL: keyed.url });
    const res = await right.chat.complete({ model: MODEL, messages: HELLO, maxTokens: 2 });
    assert.equal(res.usage.completionTokens, 2);
  } finally {
    const exited = new Promise((r) => keyed.proc.on("exit", (code) => r(code)));
    keyed.proc.kill("SIGTERM");
    assert.equal(await exited, 0);
  }
});

test("eight parallel requests each get the answer they get alone", async () => {
  const c = client();
  const args = (i) => ({
    model: MODEL,
    messages: [{ role: "user", content: `Request number ${i}` }],
    maxTokens: 10,
    temperature: 0,
  });
  const alone = [];
  for (let i = 0; i < 8; i++) alone.push((await c.chat.complete(args(i))).choices[0].message.content);
  const together = await Promise.all([...Array(8).keys()].map((i) => c.chat.complete(args(i))));
  assert.deepEqual(
    together.map((r) => r.choices[0].message.content),
    alone,
  );
});
