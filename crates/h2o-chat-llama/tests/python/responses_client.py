"""The official `openai` Python package against h2o-chat-server's Responses API, with the
real model: a plain response, the SDK's stream helper (its text equals the final response),
a forced function call and its output sent back, structured output (`text.format`, and
`parse()` with a pydantic model), and `store` refused by name.

Usage: python3 responses_client.py BASE_URL API_KEY. Prints what it saw as one JSON line last.
"""
import json
import sys

import openai
from pydantic import BaseModel

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=180)

plain = client.responses.create(model="smollm2", input="What is the capital of France?",
                                temperature=0, max_output_tokens=40)
assert plain.status in ("completed", "incomplete"), plain
assert "Paris" in plain.output_text, plain
assert plain.usage.input_tokens > 0 and plain.usage.output_tokens > 0

with client.responses.stream(model="smollm2", input="What is the capital of France?",
                             temperature=0, max_output_tokens=40) as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response()
assert "".join(deltas) == final.output_text == plain.output_text, (deltas, final.output_text)

weather = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}
called = client.responses.create(model="smollm2", input="What is the weather in Paris?", tools=[weather],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 temperature=0, max_output_tokens=80)
call = next(item for item in called.output if item.type == "function_call")
assert call.name == "get_weather" and call.call_id, call
assert isinstance(json.loads(call.arguments)["city"], str), call

with client.responses.stream(model="smollm2", input="What is the weather in Paris?", tools=[weather],
                             tool_choice={"type": "function", "name": "get_weather"},
                             temperature=0, max_output_tokens=80) as stream:
    argument_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
    streamed_call = next(item for item in stream.get_final_response().output if item.type == "function_call")
assert "".join(argument_deltas) == streamed_call.arguments == call.arguments

answered = client.responses.create(
    model="smollm2", tools=[weather], tool_choice="none", temperature=0, max_output_tokens=40,
    input=[{"role": "user", "content": "What is the weather in Paris?"},
           {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
           {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}])
assert answered.output_text, answered

structured = client.responses.create(
    model="smollm2", input="Name the capital of France and its country.", temperature=0,
    max_output_tokens=80,
    text={"format": {"type": "json_schema", "name": "capital", "strict": True, "schema": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
        "required": ["city", "country"], "additionalProperties": False}}})
capital = json.loads(structured.output_text)
assert set(capital) == {"city", "country"}, capital


class Capital(BaseModel):
    city: str
    country: str


parsed = client.responses.parse(model="smollm2", input="Name the capital of Italy and its country.",
                                temperature=0, max_output_tokens=80, text_format=Capital)
assert isinstance(parsed.output_parsed, Capital), parsed

try:
    client.responses.create(model="smollm2", input="Hi", store=True)
except openai.BadRequestError as err:
    assert "store" in str(err), err
else:
    raise AssertionError("store=true was accepted")

print(json.dumps({
    "answer": plain.output_text,
    "call": [call.name, call.arguments],
    "after_output": answered.output_text,
    "structured": capital,
    "parsed": parsed.output_parsed.model_dump(),
}))
